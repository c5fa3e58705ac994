//! The light client's adversarial conformance suite: every case of
//! `tests/conformance/cases.toml` is built from a generated chain with real
//! signatures, fed to the sans-IO client, and its verdict compared with the
//! catalogue's. A case that is not accepted must leave the trusted state
//! exactly as it was (byte for byte, through `TrustedState::encode`).

use luxtensor_light::client::{
    AgePolicy, Anchor, Checkpoint, CheckpointError, CheckpointMaterial, Config, EpochUpdate, Event,
    HeadVerdict, LightClient, NextSet, Problem, Resolution, SetDiff, TrustedState, UpdatesOutcome,
    UpstreamId, Violation, max_checkpoint_age_epochs,
};
use luxtensor_light::{B256, CertifiedHeader, SignerBitfield};
use luxtensor_tests::light_chain::{LightChain, Member, members};

const A: UpstreamId = UpstreamId(1);
const B: UpstreamId = UpstreamId(2);
const SEED: [u8; 32] = [7; 32];

/// One entry of the catalogue.
#[derive(Debug)]
struct Case {
    name: String,
    action: String,
    mutation: String,
    schedule: String,
    validators: u32,
    signers: Option<usize>,
    page: usize,
    expect: String,
}

fn load_cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/cases.toml");
    let text = std::fs::read_to_string(path).expect("catalogue readable");
    let table: toml::Table = text.parse().expect("catalogue is valid TOML");
    let cases = table["case"].as_array().expect("[[case]] entries");
    cases
        .iter()
        .map(|c| {
            let s = |k: &str, d: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or(d).to_string();
            let n = |k: &str| c.get(k).and_then(|v| v.as_integer());
            Case {
                name: s("name", ""),
                action: s("action", ""),
                mutation: s("mutation", "none"),
                schedule: s("schedule", "steady"),
                validators: n("validators").unwrap_or(6) as u32,
                signers: n("signers").map(|v| v as usize),
                page: n("page").unwrap_or(16) as usize,
                expect: s("expect", ""),
            }
        })
        .collect()
}

/// What a scenario produced: the verdict and the trusted state around the
/// input under test.
struct Outcome {
    verdict: String,
    before: Vec<u8>,
    after: Vec<u8>,
}

fn genesis_client(chain: &LightChain) -> LightClient {
    let policy = AgePolicy {
        current_epoch: 0,
        allow_old: false,
    };
    let state = Checkpoint::genesis(&chain.spec)
        .trust(&chain.spec, CheckpointMaterial::None, policy)
        .unwrap();
    let mut client = LightClient::new(chain.spec.clone(), state, Config::default()).unwrap();
    client.add_upstream(A).unwrap();
    client.add_upstream(B).unwrap();
    client
}

fn state_bytes(client: &LightClient) -> Vec<u8> {
    client.trusted_state().encode()
}

fn page_verdict(outcome: &UpdatesOutcome) -> String {
    match &outcome.rejected {
        Some((_, rule)) => rule.name().to_string(),
        None => "accepted".into(),
    }
}

fn head_verdict(result: Result<HeadVerdict, Violation>) -> String {
    match result {
        Err(rule) => rule.name().to_string(),
        Ok(HeadVerdict::Equivocation) => "equivocation".into(),
        Ok(HeadVerdict::Buffered) => "buffered".into(),
        Ok(_) => "accepted".into(),
    }
}

/// Feeds a page and returns the outcome with the state around it.
fn feed(client: &mut LightClient, updates: Vec<EpochUpdate>) -> Outcome {
    let before = state_bytes(client);
    let outcome = client.handle_updates(A, updates, SEED).unwrap();
    Outcome {
        verdict: page_verdict(&outcome),
        before,
        after: state_bytes(client),
    }
}

fn feed_head(client: &mut LightClient, upstream: UpstreamId, head: CertifiedHeader) -> Outcome {
    let before = state_bytes(client);
    let result = client.handle_head(upstream, head).unwrap();
    Outcome {
        verdict: head_verdict(result),
        before,
        after: state_bytes(client),
    }
}

fn events(client: &mut LightClient) -> Vec<Event> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

fn update_qc(case: &Case) -> Outcome {
    let chain = LightChain::steady(case.validators, 3);
    let mut update = chain.updates[0].clone();
    let header = update.header.header.header.clone();
    let (slot, hash, id) = (header.slot, header.hash(), chain.spec.chain_id);
    let quorum = chain.quorum(0);
    let n = chain.sets[0].len();
    let qc = &mut update.header.qc;
    match case.mutation.as_str() {
        "none" => {}
        "signers" => {
            let signers: Vec<usize> = (0..case.signers.unwrap()).collect();
            *qc = chain.qc_over(0, slot, hash, &signers, id);
        }
        "bit_outside" => {
            assert!(!n.is_multiple_of(8), "the bitfield needs a padding bit");
            let mut bits = qc.signers.clone();
            bits.set(n);
            qc.signers = bits;
        }
        "duplicate_signer" => {
            // The bitfield counts validator 0 once; the signature has its vote twice.
            let mut doubled = quorum.clone();
            doubled.push(quorum[0]);
            qc.signature = chain.qc_over(0, slot, hash, &doubled, id).signature;
        }
        "other_slot" => qc.signature = chain.qc_over(0, slot + 1, hash, &quorum, id).signature,
        "other_block" => {
            qc.signature = chain
                .qc_over(0, slot, B256::repeat_byte(9), &quorum, id)
                .signature
        }
        "other_chain" => qc.signature = chain.qc_over(0, slot, hash, &quorum, id + 1).signature,
        "outsider" => {
            // Member 0's vote is replaced by the vote of a key outside the set.
            let outsider = LightChain::build(&[members(50, n as u32)], 1);
            let foreign = outsider.qc_over(0, slot, hash, &[0], id).signature;
            let rest = chain.qc_over(0, slot, hash, &quorum[1..], id).signature;
            qc.signature = luxtensor_light::BlsSignature::from(aggregate_two(foreign, rest));
        }
        "empty_bitfield" => qc.signers = SignerBitfield::with_set_len(n),
        "long_bitfield" => {
            let mut bytes = qc.signers.as_bytes().to_vec();
            bytes.push(0);
            qc.signers = SignerBitfield::from_bytes(bytes);
        }
        "certifies_other_block" => {
            *qc = chain.qc_over(0, slot, B256::repeat_byte(9), &quorum, id);
        }
        other => panic!("unknown mutation {other}"),
    }
    let mut client = genesis_client(&chain);
    feed(&mut client, vec![update])
}

fn aggregate_two(a: luxtensor_light::BlsSignature, b: luxtensor_light::BlsSignature) -> [u8; 96] {
    let a = blst::min_pk::Signature::from_bytes(a.as_slice()).unwrap();
    let b = blst::min_pk::Signature::from_bytes(b.as_slice()).unwrap();
    blst::min_pk::AggregateSignature::aggregate(&[&a, &b], false)
        .unwrap()
        .to_signature()
        .compress()
}

fn changing_chain() -> LightChain {
    LightChain::build(
        &[members(0, 6), members(0, 6), members(2, 6), members(4, 6)],
        4,
    )
}

fn update_next_set(case: &Case) -> Outcome {
    let chain = changing_chain();
    let mut client = genesis_client(&chain);
    let applied = client
        .handle_updates(A, chain.updates[..2].to_vec(), SEED)
        .unwrap();
    assert_eq!(applied.applied, 2);
    // updates[2] hands over from set(2) to set(3), which differ.
    let mut update = chain.updates[2].clone();
    update.next_set = match case.mutation.as_str() {
        "foreign_full" => NextSet::Full(chain.sets[0].validators().to_vec()),
        "diff_removes_all" => NextSet::Diff(SetDiff {
            removed: (0..chain.sets[2].len() as u32).collect(),
            ..Default::default()
        }),
        "empty_diff_on_change" => NextSet::Diff(SetDiff::default()),
        other => panic!("unknown mutation {other}"),
    };
    feed(&mut client, vec![update])
}

fn update_sequence(case: &Case) -> Outcome {
    let chain = changing_chain();
    let mut client = genesis_client(&chain);
    let u = &chain.updates;
    match case.mutation.as_str() {
        "skip" => feed(&mut client, vec![u[1].clone()]),
        "replay" => {
            assert_eq!(feed(&mut client, vec![u[0].clone()]).verdict, "accepted");
            feed(&mut client, vec![u[0].clone()])
        }
        "wrong_epoch" => {
            // The client needs epoch 2's update; this one claims epoch 2 for a
            // slot of epoch 1, signed and sealed by set(2).
            feed(&mut client, u[..2].to_vec());
            let template = chain.at_slot(12).header.header.clone();
            let forged = chain.reforge(&template, |h| {
                h.epoch = 2;
                h.validator_set_hash = chain.sets[2].hash();
                h.next_validator_set_hash = chain.sets[3].hash();
                h.proposer_index = chain.sets[2].proposer_index(h.slot) as u32;
            });
            let update = EpochUpdate::new(forged, &chain.sets[2], &chain.sets[3]);
            feed(&mut client, vec![update])
        }
        "wrong_set" => {
            // Epoch 2's header, signed by set(2), presented as if set(1) signed it.
            feed(&mut client, u[..2].to_vec());
            let template = chain.updates[2].header.header.header.clone();
            let forged = chain.reforge(&template, |h| {
                h.validator_set_hash = chain.sets[1].hash();
            });
            let update = EpochUpdate::new(forged, &chain.sets[2], &chain.sets[3]);
            feed(&mut client, vec![update])
        }
        "slot_not_increasing" => {
            feed(&mut client, u[..2].to_vec());
            let template = chain.updates[2].header.header.header.clone();
            let forged = chain.reforge(&template, |h| h.slot = 5);
            let update = EpochUpdate::new(forged, &chain.sets[2], &chain.sets[3]);
            feed(&mut client, vec![update])
        }
        "good_prefix" => {
            let mut page = u.clone();
            page[2].header.qc.signature = u[1].header.qc.signature;
            // The reference: a client fed only the good prefix.
            let mut reference = genesis_client(&chain);
            reference.handle_updates(A, u[..2].to_vec(), SEED).unwrap();
            let outcome = client.handle_updates(A, page, SEED).unwrap();
            assert_eq!(outcome.applied, 2, "the good prefix is applied");
            assert_eq!(outcome.rejected.as_ref().unwrap().0, 2);
            Outcome {
                verdict: page_verdict(&outcome),
                before: state_bytes(&reference),
                after: state_bytes(&client),
            }
        }
        other => panic!("unknown mutation {other}"),
    }
}

fn schedule(name: &str) -> (Vec<Vec<Member>>, usize) {
    match name {
        "steady" => (vec![members(0, 6)], 6),
        // Epoch 3's set shares no member with epoch 2's.
        "replace" => (
            vec![members(0, 6), members(0, 6), members(0, 6), members(10, 6)],
            6,
        ),
        "double" => (
            vec![members(0, 4), members(0, 4), members(0, 8), members(0, 16)],
            16,
        ),
        "halve" => (
            vec![members(0, 16), members(0, 16), members(0, 8), members(0, 4)],
            4,
        ),
        other => panic!("unknown schedule {other}"),
    }
}

fn catch_up(case: &Case) -> Outcome {
    let (sets, last_len) = schedule(&case.schedule);
    let epochs = 5;
    let chain = LightChain::build(&sets, epochs);
    let mut client = genesis_client(&chain);
    let before = state_bytes(&client);
    for page in chain.updates.chunks(case.page) {
        let outcome = client.handle_updates(A, page.to_vec(), SEED).unwrap();
        assert_eq!(outcome.rejected, None, "{}", case.name);
    }
    let state = client.trusted_state();
    assert_eq!(state.epoch, epochs - 1);
    assert_eq!(state.set.len(), last_len);
    assert_eq!(state.next_set.as_ref(), Some(&chain.sets[epochs as usize]));
    let changed = events(&mut client)
        .into_iter()
        .filter(|e| matches!(e, Event::EpochChanged { .. }))
        .count();
    assert_eq!(changed as u64, epochs - 1, "one EpochChanged per hand-over");
    // An unchanged set costs almost nothing on the wire.
    let steady = &chain.updates[0];
    assert!(matches!(&steady.next_set, NextSet::Diff(d) if d.is_empty()));
    // Heads of the last epoch now verify, and finalize.
    for head in chain
        .headers
        .iter()
        .filter(|h| h.header.epoch == epochs - 1)
    {
        let verdict = client.handle_head(B, head.clone()).unwrap();
        assert_eq!(head_verdict(verdict), "accepted");
    }
    let last = chain.headers.last().unwrap();
    assert_eq!(client.head().unwrap().header.hash(), last.header.hash());
    assert_eq!(client.finalized().unwrap().slot, last.header.slot - 1);
    Outcome {
        verdict: "accepted".into(),
        before,
        after: state_bytes(&client),
    }
}

fn restart(case: &Case) -> Outcome {
    let chain = changing_chain();
    let mut straight = genesis_client(&chain);
    straight
        .handle_updates(A, chain.updates.clone(), SEED)
        .unwrap();
    let mut first = genesis_client(&chain);
    first
        .handle_updates(A, chain.updates[..2].to_vec(), SEED)
        .unwrap();
    let mut file = first.trusted_state().encode();
    if case.mutation == "damaged" {
        let len = file.len();
        file.truncate(len - 3);
        let err = TrustedState::decode(&file).unwrap_err();
        let rule = Violation::from_decode(err);
        return Outcome {
            verdict: rule.name().into(),
            before: first.trusted_state().encode(),
            after: first.trusted_state().encode(),
        };
    }
    let state = TrustedState::decode(&file).unwrap();
    let policy = AgePolicy {
        current_epoch: 2,
        allow_old: false,
    };
    state.check_resume(&chain.spec, policy).unwrap();
    let mut resumed = LightClient::new(chain.spec.clone(), state, Config::default()).unwrap();
    resumed.add_upstream(A).unwrap();
    assert_eq!(resumed.next_update_epoch(), 2);
    let outcome = resumed
        .handle_updates(A, chain.updates[2..].to_vec(), SEED)
        .unwrap();
    assert_eq!(outcome.rejected, None);
    assert_eq!(resumed.trusted_state(), straight.trusted_state());
    Outcome {
        verdict: "accepted".into(),
        before: file,
        after: state_bytes(&resumed),
    }
}

fn checkpoint(case: &Case) -> Outcome {
    let chain = changing_chain();
    let spec = &chain.spec;
    let max = max_checkpoint_age_epochs(spec);
    let epoch_cp = |epoch: u64| Checkpoint {
        chain_id: spec.chain_id,
        anchor: Anchor::Epoch {
            epoch,
            set_hash: chain.sets[2].hash(),
        },
    };
    let policy = |current_epoch, allow_old| AgePolicy {
        current_epoch,
        allow_old,
    };
    let material = CheckpointMaterial::Set(chain.sets[2].clone());
    let result = match case.mutation.as_str() {
        "fresh" => epoch_cp(2).trust(spec, material, policy(2 + max, false)),
        "too_old" => epoch_cp(2).trust(spec, material, policy(3 + max, false)),
        "too_old_override" => epoch_cp(2).trust(spec, material, policy(3 + max, true)),
        "other_chain" => Checkpoint {
            chain_id: spec.chain_id + 1,
            ..epoch_cp(2)
        }
        .trust(spec, material, policy(2, false)),
        "material_mismatch" => epoch_cp(2).trust(
            spec,
            CheckpointMaterial::Set(chain.sets[3].clone()),
            policy(2, false),
        ),
        "resume_too_old" => {
            let state = epoch_cp(2).trust(spec, material, policy(2, false)).unwrap();
            state
                .check_resume(spec, policy(3 + max, false))
                .map(|()| state)
        }
        other => panic!("unknown mutation {other}"),
    };
    let verdict = match &result {
        Ok(state) => {
            // A client starts from it and verifies epoch 2's update with its set.
            let mut client =
                LightClient::new(spec.clone(), state.clone(), Config::default()).unwrap();
            client.add_upstream(A).unwrap();
            let outcome = client.handle_updates(A, vec![chain.updates[2].clone()], SEED);
            page_verdict(&outcome.unwrap())
        }
        Err(CheckpointError::TooOld { age, .. }) => {
            assert_eq!(*age, max + 1);
            let text = result.as_ref().unwrap_err().to_string();
            assert!(text.contains("--allow-old-checkpoint"), "{text}");
            "checkpoint_too_old".into()
        }
        Err(CheckpointError::WrongChain { .. }) => "checkpoint_wrong_chain".into(),
        Err(CheckpointError::MaterialMismatch { .. }) => "checkpoint_material_mismatch".into(),
        Err(other) => format!("unexpected: {other}"),
    };
    Outcome {
        verdict,
        before: vec![],
        after: vec![],
    }
}

fn head(case: &Case) -> Outcome {
    let chain = LightChain::steady(6, 3);
    let mut client = genesis_client(&chain);
    for slot in 1..=4 {
        assert_eq!(
            head_verdict(client.handle_head(A, chain.at_slot(slot).clone()).unwrap()),
            "accepted"
        );
    }
    events(&mut client);
    let next = chain.at_slot(5).header.header.clone();
    match case.mutation.as_str() {
        "valid" => {
            let outcome = feed_head(&mut client, A, chain.at_slot(5).clone());
            let evs = events(&mut client);
            assert!(
                evs.iter()
                    .any(|e| matches!(e, Event::Head { block, .. } if block.slot == 5))
            );
            assert!(
                evs.iter()
                    .any(|e| matches!(e, Event::Finalized { block } if block.slot == 4)),
                "{evs:?}"
            );
            assert_eq!(client.finalized().unwrap().slot, 4);
            outcome
        }
        "qc_short" => {
            let mut head = chain.at_slot(5).clone();
            let short: Vec<usize> = (0..4).collect();
            head.qc = chain.qc_over(0, 5, next.hash(), &short, chain.spec.chain_id);
            feed_head(&mut client, A, head)
        }
        "parent_unlinked" => {
            let forged = chain.reforge(&next, |h| h.parent_hash = B256::repeat_byte(3));
            feed_head(&mut client, A, forged)
        }
        "bad_number" => {
            let forged = chain.reforge(&next, |h| h.number += 1);
            feed_head(&mut client, A, forged)
        }
        "bad_seal" => {
            let mut head = chain.at_slot(5).clone();
            head.header.proposer_signature = chain.at_slot(4).header.proposer_signature;
            feed_head(&mut client, A, head)
        }
        "next_commitment" => {
            // Its parent (slot 6) is unknown, so only the commitment rule can catch it.
            let template = chain.at_slot(7).header.header.clone();
            let forged = chain.reforge(&template, |h| {
                h.next_validator_set_hash = B256::repeat_byte(1);
            });
            feed_head(&mut client, A, forged)
        }
        "reorg" => {
            // Slot 6 on top of slot 4: block 5 leaves the head chain.
            assert_eq!(
                feed_head(&mut client, A, chain.at_slot(5).clone()).verdict,
                "accepted"
            );
            let parent = chain.at_slot(4);
            let fork = chain.header_at(&parent.header.header, parent.qc.clone(), 6, 0);
            let sealed = chain.seal(fork);
            let qc = chain.certify(&sealed.header, None);
            let fork = CertifiedHeader { header: sealed, qc };
            let outcome = feed_head(&mut client, B, fork.clone());
            let evs = events(&mut client);
            assert!(
                evs.iter()
                    .any(|e| matches!(e, Event::Reorg { dropped, new_head }
                    if dropped == &vec![next.hash()] && *new_head == fork.header.hash())),
                "{evs:?}"
            );
            outcome
        }
        "future_epoch" => {
            // A head of epoch 2 waits; once the updates arrive, it verifies.
            let future = chain.at_slot(17).clone();
            assert_eq!(future.header.epoch, 2);
            let outcome = feed_head(&mut client, A, future.clone());
            assert!(
                events(&mut client)
                    .iter()
                    .any(|e| matches!(e, Event::NeedUpdates { from_epoch: 0 }))
            );
            assert_eq!(client.pending_heads(), 1);
            client
                .handle_updates(A, chain.updates[..2].to_vec(), SEED)
                .unwrap();
            assert_eq!(client.pending_heads(), 0);
            assert_eq!(client.head().unwrap().header.hash(), future.header.hash());
            // Buffering is not trust: the state did not move when the head arrived.
            outcome
        }
        other => panic!("unknown mutation {other}"),
    }
}

fn equivocation(_case: &Case) -> Outcome {
    let chain = LightChain::steady(6, 3);
    let mut client = genesis_client(&chain);
    for slot in 1..=3 {
        client
            .handle_head(A, chain.at_slot(slot).clone())
            .unwrap()
            .unwrap();
    }
    let honest = chain.at_slot(4).clone();
    client.handle_head(A, honest.clone()).unwrap().unwrap();
    // Upstream B serves a different block, certified, at the same slot 4.
    let conflicting = chain.reforge(&honest.header.header, |h| h.gas_used = 1);
    let outcome = feed_head(&mut client, B, conflicting.clone());
    let evs = events(&mut client);
    let evidence = evs
        .iter()
        .find_map(|e| match e {
            Event::Equivocation { evidence } => Some(evidence.clone()),
            _ => None,
        })
        .expect("alarm raised");
    assert_eq!(evidence.first, honest);
    assert_eq!(evidence.second, conflicting);
    let slashable = evidence.to_evidence().expect("same proposer, same slot");
    slashable
        .verify(&chain.sets[0], chain.spec.chain_id)
        .unwrap();
    // Halted: nothing more is accepted until the conflict is resolved.
    let halted = client.handle_head(A, chain.at_slot(5).clone()).unwrap();
    assert_eq!(halted, Err(Violation::Halted));
    let page = client
        .handle_updates(A, vec![chain.updates[0].clone()], SEED)
        .unwrap();
    assert_eq!(page.rejected, Some((0, Violation::Halted)));
    assert_eq!(state_bytes(&client), outcome.before);
    client
        .resolve_equivocation(Resolution::Keep(honest.header.hash()))
        .unwrap();
    assert!(client.upstream(B).unwrap().is_demoted());
    let resumed = client.handle_head(A, chain.at_slot(5).clone()).unwrap();
    assert_eq!(resumed, Ok(HeadVerdict::NewHead));
    outcome
}

fn upstream(case: &Case) -> Outcome {
    let chain = LightChain::steady(6, 3);
    let mut client = genesis_client(&chain);
    client
        .handle_updates(A, chain.updates[..2].to_vec(), SEED)
        .unwrap();
    client.handle_tick(1_000);
    client
        .handle_head(B, chain.at_slot(1).clone())
        .unwrap()
        .unwrap();
    let mut now = 1_000;
    let last = match case.mutation.as_str() {
        "lags" => 20,
        "stalls" => 4,
        other => panic!("unknown mutation {other}"),
    };
    for slot in 1..=last {
        now += 500;
        client.handle_tick(now);
        client
            .handle_head(A, chain.at_slot(slot).clone())
            .unwrap()
            .unwrap();
        if case.mutation == "lags" {
            // B keeps talking, but about its old head.
            client
                .handle_head(B, chain.at_slot(1).clone())
                .unwrap()
                .unwrap();
        }
    }
    if case.mutation == "lags" {
        assert_eq!(client.head().unwrap().header.slot, 20);
    }
    let before = state_bytes(&client);
    let mut evs = Vec::new();
    match case.mutation.as_str() {
        "stalls" => {
            // A keeps repeating its head; B says nothing for longer than the timeout.
            let timeout = Config::default().silence_timeout_ms;
            while now <= 1_000 + timeout + 1_000 {
                now += 500;
                client.handle_tick(now);
                evs.extend(events(&mut client));
                client
                    .handle_head(A, chain.at_slot(last).clone())
                    .unwrap()
                    .unwrap();
            }
        }
        _ => client.handle_tick(now),
    }
    evs.extend(events(&mut client));
    let problems: Vec<Problem> = evs
        .into_iter()
        .filter_map(|e| match e {
            Event::UpstreamProblem { upstream, problem } => {
                assert_eq!(upstream, B, "only B misbehaves");
                Some(problem)
            }
            _ => None,
        })
        .collect();
    let verdict = match problems.first() {
        Some(Problem::Lagging { .. }) => "upstream_lagging",
        Some(Problem::Silent { .. }) => "upstream_silent",
        _ => "no problem reported",
    };
    assert!(client.upstream(B).unwrap().is_demoted());
    assert_eq!(client.upstreams().preferred(), vec![A]);
    Outcome {
        verdict: verdict.into(),
        before,
        after: state_bytes(&client),
    }
}

fn bytes(case: &Case) -> Outcome {
    let chain = LightChain::steady(6, 3);
    let mut client = genesis_client(&chain);
    let before = state_bytes(&client);
    let verdict = match case.mutation.as_str() {
        "oversized_update" => {
            let huge = vec![0xc0; Config::default().max_page_bytes + 1];
            page_verdict(&client.handle_update_bytes(A, &huge, SEED).unwrap())
        }
        "malformed_update" => {
            let mut good = alloy_rlp::encode(chain.updates[..1].to_vec());
            good.truncate(good.len() - 10);
            page_verdict(&client.handle_update_bytes(A, &good, SEED).unwrap())
        }
        "page_too_large" => {
            let page = vec![chain.updates[0].clone(); Config::default().max_updates_per_page + 1];
            page_verdict(&client.handle_updates(A, page, SEED).unwrap())
        }
        "oversized_head" => {
            let huge = vec![0u8; 200 * 1024];
            head_verdict(client.handle_head_bytes(A, &huge).unwrap())
        }
        "malformed_head" => {
            let mut good = alloy_rlp::encode(chain.at_slot(1));
            good[0] ^= 0x40;
            head_verdict(client.handle_head_bytes(A, &good).unwrap())
        }
        other => panic!("unknown mutation {other}"),
    };
    // The sender is penalised and the problem reported.
    assert!(
        events(&mut client)
            .iter()
            .any(|e| matches!(e, Event::UpstreamProblem { upstream: A, .. }))
    );
    Outcome {
        verdict,
        before,
        after: state_bytes(&client),
    }
}

fn run(case: &Case) -> Outcome {
    match case.action.as_str() {
        "update_qc" => update_qc(case),
        "update_next_set" => update_next_set(case),
        "update_sequence" => update_sequence(case),
        "catch_up" => catch_up(case),
        "restart" => restart(case),
        "checkpoint" => checkpoint(case),
        "head" => head(case),
        "equivocation" => equivocation(case),
        "upstream" => upstream(case),
        "bytes" => bytes(case),
        other => panic!("case {}: unknown action {other}", case.name),
    }
}

#[test]
fn catalogue_verdicts() {
    let cases = load_cases();
    assert!(cases.len() >= 30, "the catalogue has {} cases", cases.len());
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for case in &cases {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case {}",
            case.name
        );
        let outcome = match std::panic::catch_unwind(|| run(case)) {
            Ok(outcome) => outcome,
            Err(_) => {
                failures.push(format!("{}: panicked (see above)", case.name));
                continue;
            }
        };
        if outcome.verdict != case.expect {
            failures.push(format!(
                "{}: expected {}, got {}",
                case.name, case.expect, outcome.verdict
            ));
        } else if case.expect != "accepted" && outcome.before != outcome.after {
            failures.push(format!(
                "{}: rejected, but the trusted state changed",
                case.name
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
