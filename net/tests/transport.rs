//! The transport between real libp2p nodes on localhost: frames survive a peer
//! that reconnects and several peers opening streams at once, and the ingress
//! bounds refuse (and count) what is over them.

use bft_crypto::KeyPair;
use bft_net::{peer_id_of, Inbound, IngressLimits, NetConfig, NetHandle, Network, PeerId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Long enough for anything that is coming on localhost; only reached on failure.
const PATIENCE: Duration = Duration::from_secs(10);

fn free_address() -> libp2p::Multiaddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
}

/// A node that listens and dials nobody (a replica seen from its clients).
fn server(limits: IngressLimits) -> (Network, PeerId, libp2p::Multiaddr) {
    let key = KeyPair::generate();
    let peer = peer_id_of(&key.public()).unwrap();
    let addr = free_address();
    let net = Network::start(NetConfig {
        key,
        listen: Some(addr.clone()),
        peers: Vec::new(),
        max_frame_bytes: 1 << 20,
        peer_queue: 64,
        inbound_queue: 64,
        others_queue: None,
        limits,
        coalesce_writes: false,
    })
    .unwrap();
    (net, peer, addr)
}

/// A node with `key` that dials `servers` and listens nowhere (a client).
fn client(key: &KeyPair, servers: &[(PeerId, libp2p::Multiaddr)]) -> Network {
    client_with(key, servers, false)
}

/// As [`client`], coalescing its writes as a gateway does when `coalesce`.
fn client_with(key: &KeyPair, servers: &[(PeerId, libp2p::Multiaddr)], coalesce: bool) -> Network {
    Network::start(NetConfig {
        key: key.clone(),
        listen: None,
        peers: servers.to_vec(),
        max_frame_bytes: 1 << 20,
        // A gateway's queue holds its many clients' requests (the real one 64 Ki).
        peer_queue: if coalesce { 4096 } else { 64 },
        inbound_queue: 64,
        others_queue: None,
        limits: IngressLimits::default(),
        coalesce_writes: coalesce,
    })
    .unwrap()
}

async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + PATIENCE;
    while !ready() {
        assert!(tokio::time::Instant::now() < end, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next(inbound: &mut mpsc::Receiver<Inbound>) -> Option<Inbound> {
    tokio::time::timeout(PATIENCE, inbound.recv())
        .await
        .ok()
        .flatten()
}

fn frame(text: &str) -> Arc<Vec<u8>> {
    Arc::new(text.as_bytes().to_vec())
}

fn connected(net: &NetHandle, peer: &PeerId) -> bool {
    net.is_connected(peer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_reconnects_gets_the_frames_sent_to_it_after() {
    let (mut srv, srv_peer, addr) = server(IngressLimits::default());
    let key = KeyPair::generate();
    let me = peer_id_of(&key.public()).unwrap();
    let servers = [(srv_peer, addr)];

    let mut first = client(&key, &servers);
    first.handle.send(srv_peer, frame("hello")).unwrap();
    assert_eq!(next(&mut srv.inbound).await.unwrap().bytes, b"hello");
    srv.handle.send(me, frame("one")).unwrap();
    assert_eq!(next(&mut first.inbound).await.unwrap().bytes, b"one");
    first.handle.shutdown();
    drop(first);
    until("the server sees the client go", || {
        !connected(&srv.handle, &me)
    })
    .await;

    // The same identity comes back on a new connection (a CLI client's next call).
    let mut second = client(&key, &servers);
    until("the client is back", || connected(&srv.handle, &me)).await;
    srv.handle.send(me, frame("two")).unwrap();
    let got = next(&mut second.inbound).await;
    assert_eq!(
        got.map(|f| f.bytes),
        Some(b"two".to_vec()),
        "the first frame after the reconnection was lost (stats {:?})",
        srv.handle.stats()
    );
    assert_eq!(srv.handle.stats().frames_lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalescing_writer_delivers_every_frame_of_many_senders_in_order() {
    // A gateway's clients each queue frames microseconds apart, and its writer
    // waits a turn to send several at once: none may be lost, duplicated or
    // overtaken by a later one of the same sender.
    const SENDERS: usize = 32;
    const EACH: usize = 50;
    let (mut srv, srv_peer, addr) = server(IngressLimits::default());
    let key = KeyPair::generate();
    let me = peer_id_of(&key.public()).unwrap();
    let c = client_with(&key, &[(srv_peer, addr)], true);
    until("the server sees the client", || connected(&srv.handle, &me)).await;
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let handle = c.handle.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    handle.send(srv_peer, frame(&format!("{t} {i}"))).unwrap();
                    if i % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let mut next_of = vec![0usize; SENDERS];
    for _ in 0..SENDERS * EACH {
        let f = next(&mut srv.inbound).await.expect("a frame went missing");
        let text = String::from_utf8(f.bytes).unwrap();
        let (t, i) = text.split_once(' ').unwrap();
        let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next_of[t], "sender {t}: frame {i} out of order");
        next_of[t] += 1;
    }
    assert!(next_of.iter().all(|&n| n == EACH));
    assert_eq!(c.handle.stats().frames_lost, 0);
    assert_eq!(c.handle.stats().frames_dropped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_from_many_peers_opening_streams_at_once_all_arrive() {
    // Several replicas answering one client at the same moment each open a
    // stream to it; none may vanish on the way in.
    for round in 0..5 {
        let servers: Vec<_> = (0..6).map(|_| server(IngressLimits::default())).collect();
        let list: Vec<_> = servers.iter().map(|(_, p, a)| (*p, a.clone())).collect();
        let key = KeyPair::generate();
        let me = peer_id_of(&key.public()).unwrap();
        let mut c = client(&key, &list);
        for (s, _, _) in &servers {
            until("every server sees the client", || connected(&s.handle, &me)).await;
        }
        for (i, (s, _, _)) in servers.iter().enumerate() {
            s.handle.send(me, frame(&format!("from {i}"))).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < servers.len() {
            let Some(f) = next(&mut c.inbound).await else {
                break;
            };
            got.push(String::from_utf8(f.bytes).unwrap());
        }
        got.sort();
        let want: Vec<String> = (0..servers.len()).map(|i| format!("from {i}")).collect();
        assert_eq!(got, want, "round {round}: frames missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_others_bound_are_closed_and_counted() {
    let (mut srv, srv_peer, addr) = server(IngressLimits {
        max_other_connections: 1,
        ..IngressLimits::default()
    });
    let servers = [(srv_peer, addr)];
    let first = client(&KeyPair::generate(), &servers);
    first.handle.send(srv_peer, frame("first")).unwrap();
    assert_eq!(next(&mut srv.inbound).await.unwrap().bytes, b"first");

    let second = client(&KeyPair::generate(), &servers);
    second.handle.send(srv_peer, frame("second")).unwrap();
    until("the second connection is refused", || {
        srv.handle.stats().connections_refused > 0
    })
    .await;
    // The first client is unaffected; nothing from the second got in.
    first.handle.send(srv_peer, frame("again")).unwrap();
    let f = next(&mut srv.inbound).await.unwrap();
    assert_eq!(f.bytes, b"again");
    assert_eq!(f.peer, first.handle.local_peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_a_peers_bound_are_refused_and_counted() {
    let (mut srv, srv_peer, addr) = server(IngressLimits {
        max_streams_per_peer: 0,
        ..IngressLimits::default()
    });
    let c = client(&KeyPair::generate(), &[(srv_peer, addr)]);
    c.handle.send(srv_peer, frame("refused")).unwrap();
    until("a stream is refused", || {
        srv.handle.stats().streams_refused > 0
    })
    .await;
    // The writer got no confirmation, so it wrote nothing into the refused stream.
    assert_eq!(c.handle.stats().frames_sent, 0);
    assert!(srv.inbound.try_recv().is_err());
}
