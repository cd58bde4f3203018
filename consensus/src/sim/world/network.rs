//! The simulated network: partitions, loss, duplication and delay between
//! nodes, and the replicas' ingress (the same `Ingress` the node runs).

use super::*;

impl World {
    pub(super) fn partitioned(&self, a: Node, b: Node) -> bool {
        if let (Some(twins), Node::Replica(x), Node::Replica(y)) = (&self.cfg.twins, a, b) {
            // The twins' own traffic is routed by their behaviour; the others are
            // partitioned by the same schedule.
            let routed = x == twins.twinned || y == twins.twinned;
            return !routed && !twins.connected(x as usize, y as usize, self.now);
        }
        match (&self.partition, a, b) {
            (Some(side), Node::Replica(x), Node::Replica(y)) => {
                side.contains(&x) != side.contains(&y)
            }
            _ => false,
        }
    }

    pub(super) fn net_send(&mut self, from: Node, to: Node, msg: &Message) {
        self.net_send_frame(from, to, encode(msg));
    }

    /// Put `frame` on the wire from `from` to `to`: lost, duplicated and delayed as
    /// the seed says while the network is unreliable.
    pub(super) fn net_send_frame(&mut self, from: Node, to: Node, frame: Arc<Vec<u8>>) {
        if from == to {
            return;
        }
        let lossy = !self.healed;
        if self.partitioned(from, to) || (lossy && self.rng.gen_bool(self.cfg.faults.drop)) {
            self.report.messages_dropped += 1;
            return;
        }
        let (lo, hi) = if lossy {
            self.cfg.faults.delay_ms
        } else {
            (1, 5)
        };
        // A `delay` behaviour holds back everything its replica sends.
        let held = match from {
            Node::Replica(r) => self.replicas[r as usize]
                .node
                .as_ref()
                .map_or(Duration::ZERO, Wrapped::send_delay),
            Node::Client(_) | Node::Rogue(_) => Duration::ZERO,
        };
        let copies = if lossy && self.rng.gen_bool(self.cfg.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = held + Duration::from_micros(self.rng.gen_range(lo * 1000..=hi * 1000));
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to,
                    frame: frame.clone(),
                },
            );
        }
    }

    pub(super) fn deliver(&mut self, from: Node, to: Node, frame: Arc<Vec<u8>>) -> Step {
        if self.partitioned(from, to) {
            self.report.messages_dropped += 1;
            return Ok(());
        }
        self.report.messages_delivered += 1;
        let origin = match from {
            Node::Replica(r) => Origin::Replica(r),
            Node::Client(_) | Node::Rogue(_) => Origin::Other,
        };
        match to {
            Node::Rogue(_) => Ok(()), // what replicas tell a rogue changes nothing
            Node::Client(c) => {
                let replies = match self.ingress.admit(origin, &frame).result {
                    Ok(VerifiedFrame::Pbft(VerifiedMessage::Reply(reply))) => vec![reply],
                    Ok(VerifiedFrame::Pbft(VerifiedMessage::Replies(_, replies))) => replies,
                    _ => Vec::new(),
                };
                for reply in replies {
                    let out = self.clients[c].client.on_reply_at(self.now, &reply);
                    self.client_outputs(c, out)?;
                }
                Ok(())
            }
            Node::Replica(r) => {
                let replica = &mut self.replicas[r as usize];
                if replica.node.is_none() {
                    return Ok(());
                }
                replica.inbox.push((origin, from, frame));
                if replica.inbox.len() == 1 {
                    let incarnation = replica.incarnation;
                    let after = Duration::from_micros(self.rng.gen_range(0..=INGEST_DELAY_US));
                    self.schedule(
                        after,
                        Event::Ingest {
                            replica: r,
                            incarnation,
                        },
                    );
                }
                Ok(())
            }
        }
    }

    /// Admit a replica's inbox through the ingress, as the node's verify threads do,
    /// and hand each message to the replica in order.
    pub(super) fn ingest(&mut self, r: ReplicaId, incarnation: u32) -> Step {
        let replica = &mut self.replicas[r as usize];
        if replica.incarnation != incarnation || replica.node.is_none() {
            return Ok(());
        }
        let inbox = std::mem::take(&mut replica.inbox);
        let frames: Vec<_> = inbox.iter().map(|(o, _, f)| (*o, Arc::clone(f))).collect();
        let own = &self.replica_ingress[r as usize];
        let admitted = self.admissions.admit(&self.ingress, own, &frames);
        for (a, (_, from, _)) in admitted.into_iter().zip(inbox.iter()) {
            if self.replicas[r as usize].node.is_none() {
                return Ok(()); // crashed while handling an earlier one
            }
            let blame = a.blame();
            match a.result {
                Err(reason) => {
                    self.report.rejections += 1;
                    self.log(format!("r{r} rejects {} from {from:?}: {reason}", a.kind));
                    if let Some(sender) = blame {
                        if self.replicas[sender as usize].honest && self.replicas[r as usize].honest
                        {
                            self.checker.on_rejection(r, sender, &reason)?;
                        }
                    }
                }
                Ok(VerifiedFrame::Pbft(m)) => {
                    self.log(format!("r{r} <- {from:?} {}", a.kind));
                    self.handle(r, Input::Message(m))?;
                }
                // Nothing in the simulator sends the node's own frames (generals,
                // reply routes): the world has no gateways and runs generals apart.
                Ok(_) => self.log(format!("r{r} ignores {} from {from:?}", a.kind)),
            }
        }
        Ok(())
    }

    /// A frame from replica `id`: it leaves now, unless writes are grouped and some
    /// are pending, in which case it waits for them (as the node's persister holds a
    /// turn's frames until every earlier record is durable).
    pub(super) fn replica_send(&mut self, id: ReplicaId, to: Node, frame: Arc<Vec<u8>>) {
        let r = &mut self.replicas[id as usize];
        if self.cfg.storage.grouped_writes && !(r.unflushed.is_empty() && r.held.is_empty()) {
            r.held.push((to, frame));
        } else {
            self.net_send_frame(Node::Replica(id), to, frame);
        }
    }
}
