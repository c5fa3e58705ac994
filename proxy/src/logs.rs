//! `eth_getLogs`, provably complete: every header of the range is verified
//! (QC or parent-hash chain), blocks whose verified bloom cannot match are
//! skipped, and every other block's full receipt list is checked against
//! its receipts root before the logs are filtered locally. An upstream can
//! therefore neither forge a log nor leave one out.

use crate::proxy::Proxy;
use crate::rpc::RpcFailure;
use crate::verify;
use alloy_eips::BlockNumberOrTag;
use alloy_rpc_types_eth::{Filter, Log};

/// The logs matching `filter`, from verified receipts only.
pub async fn get_logs(proxy: &Proxy, filter: &Filter) -> Result<Vec<Log>, RpcFailure> {
    let headers = match filter.get_block_hash() {
        Some(hash) => match proxy.header_by_hash(hash).await? {
            Some(h) => vec![h],
            None => return Err(RpcFailure::new(-32000, "unknown block")),
        },
        None => {
            let head = proxy.head().ok_or_else(|| {
                RpcFailure::unavailable(
                    "no verified head yet: the light client is still catching up".into(),
                )
            })?;
            let finalized = proxy.finalized().map_or(head.number, |f| f.number);
            let resolve = |tag: Option<&BlockNumberOrTag>| -> Result<u64, RpcFailure> {
                Ok(match tag.copied().unwrap_or(BlockNumberOrTag::Latest) {
                    BlockNumberOrTag::Pending => {
                        return Err(RpcFailure::invalid_params("pending logs are not supported"));
                    }
                    BlockNumberOrTag::Latest => head.number,
                    BlockNumberOrTag::Safe | BlockNumberOrTag::Finalized => finalized,
                    BlockNumberOrTag::Earliest => 0,
                    BlockNumberOrTag::Number(n) => n.min(head.number),
                })
            };
            let from = resolve(filter.block_option.get_from_block())?;
            let to = resolve(filter.block_option.get_to_block())?;
            if from > to {
                return Err(RpcFailure::invalid_params("invalid block range params"));
            }
            let span = to - from + 1;
            if span > proxy.config.max_logs_range {
                return Err(RpcFailure::new(
                    -32005,
                    format!(
                        "block range too large: {span} blocks, the limit is {}; query a smaller range",
                        proxy.config.max_logs_range
                    ),
                ));
            }
            let mut headers = Vec::new();
            for n in from..=to {
                match proxy.header_by_number(n).await? {
                    Some(h) => headers.push(h),
                    None => return Err(RpcFailure::unavailable(format!("no verified header {n}"))),
                }
            }
            headers
        }
    };
    let mut out = Vec::new();
    for header in headers {
        if !filter.matches_bloom(header.logs_bloom) {
            continue;
        }
        let receipts = proxy.receipts(&header).await?;
        for log in verify::logs_of(&receipts) {
            if filter.matches(&log.inner) {
                if out.len() >= proxy.config.max_logs {
                    return Err(RpcFailure::new(
                        -32005,
                        format!(
                            "query returned more than {} results; query a smaller range",
                            proxy.config.max_logs
                        ),
                    ));
                }
                out.push(log);
            }
        }
    }
    Ok(out)
}
