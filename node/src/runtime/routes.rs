//! Where each client's replies go. By default a reply is sent to the client's own
//! libp2p identity (the client dialled us with its key). A client hosted by a
//! gateway instead signs a [`ReplyRoute`] naming the gateway's connection; replies
//! then go there, many clients' replies sharing one stream.

use bft_consensus::frame::ReplyRoute;
use bft_consensus::ClientId;
use bft_net::PeerId;
use std::collections::HashMap;
use thiserror::Error;

/// Routes remembered at once. A client whose route was forgotten is answered at its
/// own identity (unreachable behind a gateway) until it retransmits, which re-sends
/// its route; so the bound costs a slow request, never a lost one. When full, one
/// route makes room for a new one (never a wholesale clear, which anyone able to
/// sign routes for throwaway keys could trigger at will).
const MAX_ROUTES: usize = 1 << 16;
/// Routes over one connection: a single peer cannot fill the table by itself.
const MAX_ROUTES_PER_CONNECTION: usize = 1 << 14;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("the route's peer id does not parse")]
    BadPeer,
    /// Replies may only be routed back over the connection that asked for it, so a
    /// client's signed route cannot be replayed by someone else to divert them.
    #[error("the route names a peer other than the one that sent it")]
    NotSender,
    #[error("too many routes over one connection")]
    TooMany,
}

impl RouteError {
    /// The `reason` label of `bft_invalid_messages_total`.
    #[must_use]
    pub fn label(&self) -> &'static str {
        crate::metrics::ROUTE_REFUSED
    }
}

#[derive(Default)]
pub struct ReplyRoutes {
    routes: HashMap<ClientId, (PeerId, u64)>,
    /// How many routes name each connection.
    per_connection: HashMap<PeerId, usize>,
}

impl ReplyRoutes {
    /// Take a verified route for `client` that arrived from `sender`. An older route
    /// than the one held (a replay) is ignored without error.
    ///
    /// # Errors
    /// A route whose peer id does not parse or is not `sender`'s, or one more route
    /// over a connection that already has [`MAX_ROUTES_PER_CONNECTION`].
    pub fn learn(
        &mut self,
        client: ClientId,
        route: &ReplyRoute,
        sender: PeerId,
    ) -> Result<(), RouteError> {
        let via = PeerId::from_bytes(&route.via).map_err(|_| RouteError::BadPeer)?;
        if via != sender {
            return Err(RouteError::NotSender);
        }
        match self.routes.get(&client) {
            Some((_, issued)) if *issued >= route.issued => return Ok(()),
            Some((old, _)) if *old == via => {}
            _ => {
                if self.per_connection.get(&via).copied().unwrap_or(0) >= MAX_ROUTES_PER_CONNECTION
                {
                    return Err(RouteError::TooMany);
                }
                if !self.routes.contains_key(&client) && self.routes.len() >= MAX_ROUTES {
                    let evict = self.routes.keys().next().copied();
                    if let Some(c) = evict {
                        self.forget(&c);
                    }
                }
            }
        }
        self.forget(&client);
        self.routes.insert(client, (via, route.issued));
        *self.per_connection.entry(via).or_default() += 1;
        Ok(())
    }

    fn forget(&mut self, client: &ClientId) {
        if let Some((via, _)) = self.routes.remove(client) {
            if let Some(n) = self.per_connection.get_mut(&via) {
                *n -= 1;
                if *n == 0 {
                    self.per_connection.remove(&via);
                }
            }
        }
    }

    /// Where `client`'s replies go: its route, else its own identity.
    #[must_use]
    pub fn peer_for(&self, client: &ClientId) -> Option<PeerId> {
        match self.routes.get(client) {
            Some((via, _)) => Some(*via),
            None => bft_net::peer_id_of(client),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bft_crypto::KeyPair;

    fn peer() -> PeerId {
        bft_net::peer_id_of(&KeyPair::generate().public()).unwrap()
    }

    fn route(via: PeerId, issued: u64) -> ReplyRoute {
        ReplyRoute {
            via: via.to_bytes(),
            issued,
        }
    }

    #[test]
    fn replies_go_to_the_client_itself_until_it_names_a_route() {
        let client = KeyPair::generate().public();
        let gateway = peer();
        let mut routes = ReplyRoutes::default();
        assert_eq!(routes.peer_for(&client), bft_net::peer_id_of(&client));
        routes.learn(client, &route(gateway, 5), gateway).unwrap();
        assert_eq!(routes.peer_for(&client), Some(gateway));
    }

    #[test]
    fn a_route_must_name_the_connection_it_came_over() {
        let client = KeyPair::generate().public();
        let (gateway, thief) = (peer(), peer());
        let mut routes = ReplyRoutes::default();
        assert_eq!(
            routes.learn(client, &route(gateway, 5), thief),
            Err(RouteError::NotSender)
        );
        assert_eq!(
            routes.learn(
                client,
                &ReplyRoute {
                    via: vec![1, 2, 3],
                    issued: 5
                },
                thief
            ),
            Err(RouteError::BadPeer)
        );
        assert_eq!(routes.peer_for(&client), bft_net::peer_id_of(&client));
    }

    #[test]
    fn one_connection_cannot_fill_the_table_and_moving_keeps_the_counts() {
        let mut routes = ReplyRoutes::default();
        let (flooder, gateway) = (peer(), peer());
        for i in 0..MAX_ROUTES_PER_CONNECTION {
            let client = KeyPair::from_seed(seed(i)).public();
            routes.learn(client, &route(flooder, 1), flooder).unwrap();
        }
        let one_more = KeyPair::generate().public();
        assert_eq!(
            routes.learn(one_more, &route(flooder, 1), flooder),
            Err(RouteError::TooMany)
        );
        // A flooded client moving to another gateway frees its place on the first.
        let moved = KeyPair::from_seed(seed(0)).public();
        routes.learn(moved, &route(gateway, 2), gateway).unwrap();
        assert_eq!(routes.peer_for(&moved), Some(gateway));
        routes.learn(one_more, &route(flooder, 1), flooder).unwrap();
        assert_eq!(routes.per_connection[&flooder], MAX_ROUTES_PER_CONNECTION);
        assert_eq!(routes.per_connection[&gateway], 1);
    }

    fn seed(i: usize) -> [u8; 32] {
        let mut s = [7; 32];
        s[..8].copy_from_slice(&(i as u64).to_le_bytes());
        s
    }

    #[test]
    fn a_replayed_older_route_does_not_undo_a_newer_one() {
        let client = KeyPair::generate().public();
        let (old, new) = (peer(), peer());
        let mut routes = ReplyRoutes::default();
        routes.learn(client, &route(old, 1), old).unwrap();
        routes.learn(client, &route(new, 2), new).unwrap();
        routes.learn(client, &route(old, 1), old).unwrap();
        assert_eq!(routes.peer_for(&client), Some(new));
    }
}
