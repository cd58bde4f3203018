//! The replicas' storage as the node's persister and checkpoint thread use it:
//! grouped synced writes, records written apart, crashes that lose what was not
//! durable, restarts from what was, and damaged disks.

use super::*;

impl World {
    /// The node's checkpoint thread: the record lands later, or is lost in a crash.
    pub(super) fn write_apart(&mut self, id: ReplicaId, record: PersistRecord) {
        let incarnation = self.replicas[id as usize].incarnation;
        let after = Duration::from_millis(self.rng.gen_range(0..=APART_WRITE_MS));
        self.schedule(
            after,
            Event::LandApart {
                replica: id,
                incarnation,
                record: Box::new(record),
            },
        );
    }

    pub(super) fn schedule_flush(&mut self, id: ReplicaId) {
        let r = &mut self.replicas[id as usize];
        if r.flush_scheduled
            || (r.unflushed.is_empty() && r.held.is_empty() && r.unflushed_apart.is_empty())
        {
            return;
        }
        r.flush_scheduled = true;
        let incarnation = r.incarnation;
        let after = Duration::from_micros(self.rng.gen_range(0..=self.cfg.storage.flush_us));
        self.schedule(
            after,
            Event::Flush {
                replica: id,
                incarnation,
            },
        );
    }

    /// The persist thread's write: every unflushed record at once, then the frames
    /// that waited. A crash can fall before the write (all of it lost) or between the
    /// write and the sends (the records durable, the frames lost).
    ///
    /// The node syncs only when something waits for the records: a frame, or a
    /// stable checkpoint among them. Records alone are written unsynced and stay
    /// at risk (here: unflushed) until a later group with frames syncs them with
    /// its own; any frame the replica sends meanwhile waits for that group.
    pub(super) fn flush(&mut self, id: ReplicaId, incarnation: u32) -> Step {
        let r = &self.replicas[id as usize];
        if r.incarnation != incarnation || r.node.is_none() {
            return Ok(());
        }
        let crash = r.honest && !self.healed && self.rng.gen_bool(self.cfg.faults.crash);
        if crash && self.rng.gen_bool(0.5) {
            self.log(format!("r{id} crashes before its write lands"));
            return self.crash(id);
        }
        let r = &mut self.replicas[id as usize];
        r.flush_scheduled = false;
        let synced = !r.held.is_empty()
            || r.unflushed
                .iter()
                .any(|record| matches!(record, PersistRecord::Stable(_)));
        let records = if synced {
            r.written_unsynced = 0;
            std::mem::take(&mut r.unflushed)
        } else {
            if r.written_unsynced < r.unflushed.len() {
                r.written_unsynced = r.unflushed.len();
                self.report.unsynced_writes += 1;
            }
            Vec::new()
        };
        if !records.is_empty() {
            for record in &records {
                r.durable.apply(record);
            }
            r.has_persisted = true;
            self.report.write_groups += 1;
        }
        let apart = std::mem::take(&mut self.replicas[id as usize].unflushed_apart);
        for record in apart {
            self.write_apart(id, record);
        }
        if crash {
            self.log(format!("r{id} crashes after its write, before its sends"));
            return self.crash(id);
        }
        let r = &mut self.replicas[id as usize];
        let held = std::mem::take(&mut r.held);
        r.signed_checkpoint = r
            .signed_checkpoint
            .max(std::mem::take(&mut r.held_checkpoint));
        for (to, frame) in held {
            self.net_send_frame(Node::Replica(id), to, frame);
        }
        Ok(())
    }

    pub(super) fn crash(&mut self, id: ReplicaId) -> Step {
        let r = &mut self.replicas[id as usize];
        r.node = None;
        r.incarnation += 1;
        r.timers.clear();
        r.inbox.clear();
        if r.written_unsynced > 0 {
            // Records written unsynced may have reached the disk, any prefix of
            // them: RocksDB's log is replayed up to its first torn record.
            let kept = self.rng.gen_range(0..=r.written_unsynced);
            if kept < r.written_unsynced {
                self.report.unsynced_lost += 1;
            }
            r.keep_written(kept);
        }
        r.written_unsynced = 0;
        r.unflushed.clear();
        r.held.clear();
        r.held_checkpoint = 0;
        r.unflushed_apart.clear();
        r.flush_scheduled = false;
        self.report.crashes += 1;
        self.log(format!("r{id} CRASHES"));
        let down = Duration::from_millis(self.rng.gen_range(50..2000));
        self.schedule(down, Event::Restart { replica: id });
        Ok(())
    }

    pub(super) fn restart(&mut self, id: ReplicaId) -> Step {
        let r = &self.replicas[id as usize];
        if r.node.is_some() || r.retired {
            return Ok(());
        }
        let damaged = self.maybe_damage_storage(id);
        let now = self.local_now(id);
        let r = &mut self.replicas[id as usize];
        r.cfg.incarnation = u64::from(r.incarnation);
        let started =
            Replica::<KvStore>::check_not_wiped(&r.durable, r.has_persisted).and_then(|()| {
                Replica::recover(
                    r.cfg.clone(),
                    r.key.clone(),
                    KvStore::new(),
                    &r.durable,
                    now,
                )
            });
        let (replica, out) = match started {
            Ok(started) => started,
            Err(e) if damaged => {
                // What the node does: refuse to start, one clear line. Down for good.
                r.retired = true;
                r.honest = false;
                self.report.refused_starts += 1;
                self.log(format!("r{id} REFUSES TO START: {e}"));
                return Ok(());
            }
            Err(e) => {
                return Err(Violation {
                    invariant: "durability",
                    detail: format!("r{id} cannot recover: {e}"),
                })
            }
        };
        if damaged {
            return Err(Violation {
                invariant: "durability",
                detail: format!("r{id} started from a damaged or lost store"),
            });
        }
        let last: Seq = replica.last_executed();
        if r.honest && last < r.signed_checkpoint {
            return Err(Violation {
                invariant: "durability",
                detail: format!(
                    "r{id} restarted at seq {last}, below the checkpoint {} it signed before the crash",
                    r.signed_checkpoint
                ),
            });
        }
        // A Byzantine replica that crashed comes back as Byzantine as it was.
        let behaviour = match self.cfg.byzantine.iter().find(|(b, _)| *b == id) {
            Some((_, name)) if !r.honest => by_name(
                name,
                self.cfg.seed ^ u64::from(id) ^ u64::from(r.incarnation),
            )
            .expect("known behaviour"),
            _ => Box::new(Honest),
        };
        r.node = Some(Wrapped::new(replica, behaviour));
        let view = r.durable.view;
        self.log(format!("r{id} RESTARTS at view {view} executed {last}"));
        self.perform(id, out, None)
    }

    /// The storage family's faults at a restart: the stable checkpoint's snapshot
    /// damaged, or the data directory wiped (only where something was written, and
    /// for at most f replicas of a run). True if the store was harmed.
    pub(super) fn maybe_damage_storage(&mut self, id: ReplicaId) -> bool {
        let retired = self.replicas.iter().filter(|r| r.retired).count();
        let st = self.cfg.storage.clone();
        // No draw at all when the family has no storage faults, so the basic
        // family's seeds replay as they did before these faults existed.
        let harmless = st.damaged_snapshot == 0.0 && st.wiped_directory == 0.0;
        if harmless || retired >= self.cfg.f || self.healed {
            return false;
        }
        let r = &self.replicas[id as usize];
        let can_damage = r
            .durable
            .stable
            .as_ref()
            .is_some_and(|s| !s.snapshot.is_empty());
        if can_damage && self.rng.gen_bool(st.damaged_snapshot) {
            let r = &mut self.replicas[id as usize];
            let stable = r.durable.stable.as_mut().expect("checked above");
            let at = stable.snapshot.len() / 2;
            std::sync::Arc::make_mut(&mut stable.snapshot)[at] ^= 0x40;
            self.log(format!("r{id}'s snapshot file is damaged"));
            return true;
        }
        if r.has_persisted && self.rng.gen_bool(st.wiped_directory) {
            self.replicas[id as usize].durable = DurableState::default();
            self.log(format!("r{id}'s data directory is wiped"));
            return true;
        }
        false
    }
}
