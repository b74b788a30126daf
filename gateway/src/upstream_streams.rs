//! Calls opening at once share upstream connections.
//!
//! Pingora multiplexes up to [`STREAMS_PER_CONNECTION`] calls on one
//! upstream HTTP/2 connection, but its connector has no shared "connection
//! being opened": a call that finds no connection with a free stream opens
//! one, and so does every call arriving while that one is being opened. A
//! burst of new streams (clients reconnecting after a restart, a page
//! subscribing to its topics) so opened dozens to hundreds of connections
//! where a few carry them: 1,000 streams in `bench/gateway --streams`
//! opened 27-174, each holding about 27 KiB of the gateway's memory in
//! HTTP/2 buffers, and as much again in the replica.
//!
//! So the gateway counts, per replica, the connections its calls ride on
//! (by descriptor) with their calls, and the calls on their way to one. A
//! call that would find no free stream waits while one other call opens a
//! connection, then looks again; it waits at most [`MOST_WAIT`], after
//! which it goes on as before (a replica slow to accept must not hold calls
//! back longer than opening their own connections would). This is the
//! gateway's own view, not Pingora's pool: a connection whose calls all
//! ended leaves it until a call rides on it again (Pingora's idle pool may
//! then hand it to the call that would open one).

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::RawFd,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::Notify;

/// Calls on one upstream HTTP/2 connection (Pingora's `max_h2_streams`).
pub const STREAMS_PER_CONNECTION: usize = 128;

/// Longest a call waits for another call's connection to open: far longer
/// than opening one takes on a healthy network, far shorter than the
/// connect timeout.
const MOST_WAIT: Duration = Duration::from_millis(250);

/// The gateway's view of its upstream connections, by replica.
#[derive(Debug, Default)]
pub struct UpstreamStreams {
    replicas: Mutex<HashMap<SocketAddr, Replica>>,
}

#[derive(Debug, Default)]
struct Replica {
    /// Calls riding on each connection, by its descriptor.
    connections: HashMap<RawFd, usize>,
    /// Calls admitted that have not reached a connection yet.
    on_the_way: usize,
    /// Whether one of those is opening a connection (others wait for it).
    opening: bool,
    /// Told when the opening call connected or gave up.
    opened: Arc<Notify>,
}

impl Replica {
    fn riding(&self) -> usize {
        self.connections.values().sum()
    }

    fn has_free_stream(&self) -> bool {
        self.riding() + self.on_the_way < self.connections.len() * STREAMS_PER_CONNECTION
    }

    /// One admitted call is no longer on its way (it connected, or gave
    /// up); if it was opening, the waiting calls look again.
    fn arrived(&mut self, opener: bool) {
        self.on_the_way -= 1;
        if opener {
            self.opening = false;
            self.opened.notify_waiters();
        }
    }

    fn is_unused(&self) -> bool {
        self.connections.is_empty() && self.on_the_way == 0 && !self.opening
    }
}

/// One call's place in [`UpstreamStreams`], held in its context; given
/// back when dropped, however the call ended.
#[derive(Debug)]
pub struct Admission {
    streams: Arc<UpstreamStreams>,
    replica: SocketAddr,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// On its way to a connection; `opener` if others wait for it.
    OnTheWay {
        opener: bool,
    },
    Riding(RawFd),
}

impl UpstreamStreams {
    fn lock(&self) -> MutexGuard<'_, HashMap<SocketAddr, Replica>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a call go to `replica` at once when a connection to it has a
    /// free stream or none is being opened (the call then opens it); else
    /// it waits for the one being opened, at most [`MOST_WAIT`].
    pub async fn admit(self: &Arc<Self>, replica: SocketAddr) -> Admission {
        let waited_enough = tokio::time::Instant::now() + MOST_WAIT;
        loop {
            let opened: Arc<Notify>;
            let notified = {
                let mut replicas = self.lock();
                let state = replicas.entry(replica).or_default();
                if state.has_free_stream() || !state.opening {
                    let opener = !state.has_free_stream();
                    state.opening |= opener;
                    state.on_the_way += 1;
                    return self.admission(replica, opener);
                }
                opened = state.opened.clone();
                // Made under the lock: it hears every notify_waiters after.
                opened.notified()
            };
            if tokio::time::timeout_at(waited_enough, notified)
                .await
                .is_err()
            {
                let mut replicas = self.lock();
                replicas.entry(replica).or_default().on_the_way += 1;
                return self.admission(replica, false);
            }
        }
    }

    fn admission(self: &Arc<Self>, replica: SocketAddr, opener: bool) -> Admission {
        Admission {
            streams: self.clone(),
            replica,
            stage: Stage::OnTheWay { opener },
        }
    }

    /// Connections the gateway's calls ride on to `replica`, and the calls.
    #[cfg(test)]
    fn view(&self, replica: SocketAddr) -> (usize, usize) {
        self.lock()
            .get(&replica)
            .map_or((0, 0), |r| (r.connections.len(), r.riding()))
    }
}

impl Admission {
    /// The call rides on the connection with descriptor `fd` (Pingora's
    /// `connected_to_upstream`), opened for it or not.
    pub fn connected(&mut self, fd: RawFd) {
        let mut replicas = self.streams.lock();
        let state = replicas.entry(self.replica).or_default();
        match std::mem::replace(&mut self.stage, Stage::Riding(fd)) {
            Stage::OnTheWay { opener } => state.arrived(opener),
            // Already riding (Pingora connects once per attempt, and each
            // attempt has an admission of its own): move it over.
            Stage::Riding(earlier) => leave(state, earlier),
        }
        *state.connections.entry(fd).or_default() += 1;
    }
}

/// One call leaves the connection `fd`.
fn leave(state: &mut Replica, fd: RawFd) {
    if let Some(calls) = state.connections.get_mut(&fd) {
        *calls -= 1;
        if *calls == 0 {
            state.connections.remove(&fd);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut replicas = self.streams.lock();
        let Some(state) = replicas.get_mut(&self.replica) else {
            return;
        };
        match self.stage {
            // Gave up (the connect failed, or the call ended): if it was
            // opening, one of the waiting calls opens instead.
            Stage::OnTheWay { opener } => state.arrived(opener),
            Stage::Riding(fd) => leave(state, fd),
        }
        if state.is_unused() {
            replicas.remove(&self.replica);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> SocketAddr {
        "127.0.0.1:7000".parse().unwrap()
    }

    #[tokio::test]
    async fn the_first_call_opens_and_the_others_wait_for_its_connection() {
        let streams = Arc::new(UpstreamStreams::default());
        let mut opener = streams.admit(replica()).await;
        assert!(matches!(opener.stage, Stage::OnTheWay { opener: true }));
        let waiting: Vec<_> = (0..200)
            .map(|_| {
                let streams = streams.clone();
                tokio::spawn(async move { streams.admit(replica()).await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(waiting.iter().all(|w| !w.is_finished()), "they wait");

        opener.connected(10);
        // 127 more fit on its connection; the 128th of the waiting calls
        // opens the next, and the rest wait for that one.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let mut admitted = Vec::new();
        let mut pending = Vec::new();
        for call in waiting {
            if call.is_finished() {
                admitted.push(call.await.unwrap());
            } else {
                pending.push(call);
            }
        }
        assert_eq!(admitted.len(), 128);
        let openers = admitted
            .iter()
            .filter(|a| matches!(a.stage, Stage::OnTheWay { opener: true }))
            .count();
        assert_eq!(openers, 1);
        for admission in &mut admitted {
            let opener = matches!(admission.stage, Stage::OnTheWay { opener: true });
            admission.connected(if opener { 11 } else { 10 });
        }
        assert_eq!(streams.view(replica()), (2, 129));
        for call in pending {
            drop(call.await.unwrap());
        }
        drop(admitted);
        drop(opener);
        assert_eq!(streams.view(replica()), (0, 0));
        assert!(streams.lock().is_empty(), "an unused replica is forgotten");
    }

    #[tokio::test]
    async fn an_opener_giving_up_lets_the_next_one_open() {
        let streams = Arc::new(UpstreamStreams::default());
        let opener = streams.admit(replica()).await;
        let next = {
            let streams = streams.clone();
            tokio::spawn(async move { streams.admit(replica()).await })
        };
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        drop(opener);
        let next = next.await.unwrap();
        assert!(matches!(next.stage, Stage::OnTheWay { opener: true }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_for_a_slow_opener_no_longer_than_most_wait() {
        let streams = Arc::new(UpstreamStreams::default());
        let _opener = streams.admit(replica()).await;
        let started = tokio::time::Instant::now();
        let admission = streams.admit(replica()).await;
        assert_eq!(started.elapsed(), MOST_WAIT);
        assert!(matches!(admission.stage, Stage::OnTheWay { opener: false }));
    }
}
