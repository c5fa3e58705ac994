//! A misbehaving libp2p peer against a real `luxtensor-node` process:
//! malformed gossip and oversized sync frames get it penalised and banned,
//! and the node keeps finalizing and serving.

use libp2p::gossipsub::IdentTopic;
use luxtensor_full::network::{
    BehaviourConfig, Network, NetworkConfig, NetworkEvent, ScoreConfig, Topic,
};
use luxtensor_full::node::devnet;
use luxtensor_tests::node_process::{NodeProcess, devnet_options};
use luxtensor_tests::rpc_support::HttpClient;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_malformed_and_oversized_messages_get_the_sender_banned_and_the_node_survives() {
    let dir = tempfile::tempdir().unwrap();
    let options = devnet_options(dir.path(), 1);
    let prepared = devnet::prepare(&options).unwrap();
    let node = NodeProcess::spawn(&prepared[0].1, &dir.path().join("node.log"));
    let target: libp2p::Multiaddr = prepared[0].0.p2p.parse().unwrap();
    let target_peer: libp2p::PeerId = node.peer_id.parse().unwrap();

    let mut attacker = Network::start(
        libp2p::identity::Keypair::generate_ed25519(),
        NetworkConfig {
            chain_id: 31337,
            listen: "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            bootnodes: vec![target],
            behaviour: BehaviourConfig::default(),
            scores: ScoreConfig::default(),
        },
    )
    .unwrap();
    let connected = tokio::time::timeout(WAIT, async {
        loop {
            if let NetworkEvent::PeerConnected(peer) = attacker.next_event().await {
                return peer;
            }
        }
    })
    .await
    .expect("the attacker connects");
    assert_eq!(connected, target_peer);

    // An oversized sync frame: a 4-byte length far over the cap, then junk.
    let swarm = attacker.swarm_mut();
    let huge = vec![0xAB; 300 * 1024];
    swarm.behaviour_mut().sync.send_request(&target_peer, huge);
    // Gossip that does not decode, on every topic (after the subscriptions
    // are exchanged, publishing floods to the node).
    let garbage = |i: u8| vec![0xFF, 0x00, i, 0x13, 0x37];
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut sent = 0u8;
    let disconnected = loop {
        for topic in Topic::ALL {
            let topic = IdentTopic::new(topic.name(31337));
            if attacker
                .swarm_mut()
                .behaviour_mut()
                .gossipsub
                .publish(topic, garbage(sent))
                .is_ok()
            {
                sent = sent.wrapping_add(1);
            }
        }
        match tokio::time::timeout_at(deadline, async {
            tokio::time::timeout(Duration::from_millis(200), attacker.next_event()).await
        })
        .await
        {
            Err(_) => break false,
            Ok(Ok(NetworkEvent::PeerDisconnected(peer))) if peer == target_peer => break true,
            Ok(_) => {}
        }
    };
    assert!(disconnected, "the node never dropped the attacker");
    let log = node.log_text();
    assert!(log.contains("peer banned"), "{log}");

    // The node still finalizes and serves RPC.
    let mut rpc = HttpClient::connect(node.http.unwrap()).await;
    let before = rpc.result("eth_blockNumber", json!([])).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = rpc.result("eth_blockNumber", json!([])).await;
        if now != before {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "finality stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
