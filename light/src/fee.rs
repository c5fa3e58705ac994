//! EIP-1559 fee arithmetic that the node's and the proxy's `eth_feeHistory`
//! share: the checks on reward percentiles and the gas-weighted tip at each
//! percentile of one block, computed as geth computes them.

use thiserror::Error;

/// Most reward percentiles one `eth_feeHistory` call may ask for (geth: 100).
pub const MAX_REWARD_PERCENTILES: usize = 100;

/// Why a list of reward percentiles is refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PercentileError {
    /// More percentiles than [`MAX_REWARD_PERCENTILES`].
    #[error("too many reward percentiles: {0} (most {MAX_REWARD_PERCENTILES})")]
    TooMany(usize),
    /// A percentile outside 0..=100 or smaller than the one before it.
    #[error("invalid reward percentile: {0} (each in 0..=100, in ascending order)")]
    Invalid(f64),
}

/// Checks reward percentiles: at most [`MAX_REWARD_PERCENTILES`], each in
/// 0..=100, in ascending order.
pub fn check_reward_percentiles(percentiles: &[f64]) -> Result<(), PercentileError> {
    if percentiles.len() > MAX_REWARD_PERCENTILES {
        return Err(PercentileError::TooMany(percentiles.len()));
    }
    let mut previous = 0.0;
    for &p in percentiles {
        if !(0.0..=100.0).contains(&p) || p < previous {
            return Err(PercentileError::Invalid(p));
        }
        previous = p;
    }
    Ok(())
}

/// The tip per gas at each percentile of one block's gas, as geth computes
/// it: transactions sorted by tip, and for percentile `p` the tip of the
/// first transaction at which the running gas total reaches `p`% of the
/// block's gas. `tips` holds each transaction's (tip per gas, gas used); an
/// empty block gives zeros.
pub fn reward_percentiles(mut tips: Vec<(u128, u64)>, percentiles: &[f64]) -> Vec<u128> {
    if tips.is_empty() {
        return vec![0; percentiles.len()];
    }
    tips.sort_unstable();
    let total: u64 = tips.iter().map(|t| t.1).sum();
    percentiles
        .iter()
        .map(|p| {
            let threshold = (total as f64 * p / 100.0) as u64;
            let mut sum = 0u64;
            for &(tip, gas) in &tips {
                sum = sum.saturating_add(gas);
                if sum >= threshold {
                    return tip;
                }
            }
            tips.last().map_or(0, |t| t.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_gas_weighted() {
        // 21k gas at tip 1, 79k gas at tip 5: a quarter of the gas is reached
        // within the tip-5 transaction, a fifth within the tip-1 one.
        let tips = vec![(5, 79_000), (1, 21_000)];
        assert_eq!(
            reward_percentiles(tips, &[0.0, 20.0, 25.0, 100.0]),
            vec![1, 1, 5, 5]
        );
        assert_eq!(reward_percentiles(Vec::new(), &[10.0, 90.0]), vec![0, 0]);
    }

    #[test]
    fn bad_percentile_lists_are_refused() {
        assert_eq!(check_reward_percentiles(&[10.0, 50.0, 50.0, 90.0]), Ok(()));
        assert_eq!(
            check_reward_percentiles(&[50.0, 10.0]),
            Err(PercentileError::Invalid(10.0))
        );
        assert_eq!(
            check_reward_percentiles(&[101.0]),
            Err(PercentileError::Invalid(101.0))
        );
        assert_eq!(
            check_reward_percentiles(&[-1.0]),
            Err(PercentileError::Invalid(-1.0))
        );
        assert!(check_reward_percentiles(&[f64::NAN]).is_err());
        assert_eq!(
            check_reward_percentiles(&[1.0; 101]),
            Err(PercentileError::TooMany(101))
        );
    }
}
