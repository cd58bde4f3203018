//! Where each client's replies go. By default a reply is sent to the client's own
//! libp2p identity (the client dialled us with its key). A client hosted by a
//! gateway instead signs a [`ReplyRoute`] naming the gateway's connection; replies
//! then go there, many clients' replies sharing one stream.

use bft_consensus::messages::ReplyRoute;
use bft_consensus::ClientId;
use bft_net::PeerId;
use std::collections::HashMap;
use thiserror::Error;

/// Routes remembered at once. A client whose route was forgotten is answered at its
/// own identity (unreachable behind a gateway) until it retransmits, which re-sends
/// its route; so the bound costs a slow request, never a lost one.
const MAX_ROUTES: usize = 1 << 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("the route's peer id does not parse")]
    BadPeer,
    /// Replies may only be routed back over the connection that asked for it, so a
    /// client's signed route cannot be replayed by someone else to divert them.
    #[error("the route names a peer other than the one that sent it")]
    NotSender,
}

impl RouteError {
    /// The `reason` label of `bft_invalid_messages_total`.
    #[must_use]
    pub fn label(&self) -> &'static str {
        "bad_route"
    }
}

#[derive(Default)]
pub struct ReplyRoutes {
    routes: HashMap<ClientId, (PeerId, u64)>,
}

impl ReplyRoutes {
    /// Take a verified route for `client` that arrived from `sender`. An older route
    /// than the one held (a replay) is ignored without error.
    ///
    /// # Errors
    /// A route that does not name `sender`.
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
        if let Some((_, issued)) = self.routes.get(&client) {
            if *issued >= route.issued {
                return Ok(());
            }
        } else if self.routes.len() >= MAX_ROUTES {
            self.routes.clear();
        }
        self.routes.insert(client, (via, route.issued));
        Ok(())
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
