//! In-flight budgets: how many records and record bytes may be on their way to Kafka, per
//! connection and for the whole process. A `Reservation` holds its share until Kafka's
//! delivery report drops it, whatever the connection that made it is doing by then.
//! `Buffers` bounds the other memory connections hold: bytes waiting to be written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::futures::Notified;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Records and bytes, each a semaphore: waiters queue fairly and sleep until room is made,
/// instead of polling.
#[derive(Debug)]
pub struct Budget {
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

impl Budget {
    pub fn new(max_records: usize, max_bytes: usize) -> Arc<Budget> {
        let max_bytes = max_bytes.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        Arc::new(Budget {
            records: Arc::new(Semaphore::new(max_records.min(Semaphore::MAX_PERMITS))),
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
        })
    }

    /// Records currently reserved.
    #[cfg(test)]
    pub fn records_in_use(&self, max_records: usize) -> usize {
        max_records.saturating_sub(self.records.available_permits())
    }

    async fn take(&self, bytes: usize) -> Share {
        // A record larger than the whole budget takes all of it rather than waiting forever.
        let bytes = bytes.clamp(1, self.max_bytes) as u32;
        // Closed semaphores are never closed: `acquire` cannot fail here.
        let records = self.records.clone().acquire_many_owned(1).await;
        let bytes = self.bytes.clone().acquire_many_owned(bytes).await;
        Share {
            _records: records.ok(),
            _bytes: bytes.ok(),
        }
    }

    fn try_take(&self, bytes: usize) -> Option<Share> {
        let bytes = bytes.clamp(1, self.max_bytes) as u32;
        let records = self.records.clone().try_acquire_many_owned(1).ok()?;
        let bytes = self.bytes.clone().try_acquire_many_owned(bytes).ok()?;
        Some(Share {
            _records: Some(records),
            _bytes: Some(bytes),
        })
    }
}

/// Permits held until dropped.
#[derive(Debug)]
struct Share {
    _records: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// One record's place in its connection's budget and in the global one. Dropping it gives
/// both back; it travels with the record into the producer and is dropped on delivery.
#[derive(Debug)]
pub struct Reservation {
    _connection: Share,
    _global: Share,
}

impl Reservation {
    /// No share of anything, for what is not sent to Kafka.
    pub fn none() -> Reservation {
        let nothing = || Share {
            _records: None,
            _bytes: None,
        };
        Reservation {
            _connection: nothing(),
            _global: nothing(),
        }
    }

    /// At once if there is room in both budgets.
    pub fn try_reserve(connection: &Budget, global: &Budget, bytes: usize) -> Option<Reservation> {
        let c = connection.try_take(bytes)?;
        let g = global.try_take(bytes)?;
        Some(Reservation {
            _connection: c,
            _global: g,
        })
    }

    /// Waits for room: the connection's own first, so a connection waits in the global
    /// queue with at most one record.
    pub async fn reserve(
        connection: Arc<Budget>,
        global: Arc<Budget>,
        bytes: usize,
    ) -> Reservation {
        let c = connection.take(bytes).await;
        let g = global.take(bytes).await;
        Reservation {
            _connection: c,
            _global: g,
        }
    }
}

/// Bytes all connections hold waiting to be written (to devices, to the embedded broker).
/// Past the limit the connections holding much stop reading until it is below again.
#[derive(Debug)]
pub struct Buffers {
    held: AtomicUsize,
    limit: usize,
    /// Woken when the buffers go from full to not full.
    room: Notify,
}

impl Buffers {
    pub fn new(limit: usize) -> Arc<Buffers> {
        Arc::new(Buffers {
            held: AtomicUsize::new(0),
            limit,
            room: Notify::new(),
        })
    }

    pub fn full(&self) -> bool {
        self.held.load(Ordering::Relaxed) >= self.limit
    }

    /// Resolves once the buffers are no longer full; enable it, then check `full`, so
    /// the wake-up is not missed.
    pub fn room(&self) -> Notified<'_> {
        self.room.notified()
    }

    fn give_back(&self, bytes: usize) {
        let before = self.held.fetch_sub(bytes, Ordering::Relaxed);
        if before >= self.limit && before - bytes < self.limit {
            self.room.notify_waiters();
        }
    }
}

/// One connection's part of `Buffers`, kept current with `set` and given back on drop.
#[derive(Debug)]
pub struct BufferShare {
    pool: Arc<Buffers>,
    held: usize,
}

impl BufferShare {
    pub fn new(pool: Arc<Buffers>) -> BufferShare {
        BufferShare { pool, held: 0 }
    }

    pub fn pool(&self) -> Arc<Buffers> {
        self.pool.clone()
    }

    /// Records what the connection holds now; true when all connections together hold
    /// the limit or more.
    pub fn set(&mut self, bytes: usize) -> bool {
        if bytes == self.held {
            return self.pool.full();
        }
        if bytes > self.held {
            self.pool
                .held
                .fetch_add(bytes - self.held, Ordering::Relaxed);
        } else {
            self.pool.give_back(self.held - bytes);
        }
        self.held = bytes;
        self.pool.full()
    }
}

impl Drop for BufferShare {
    fn drop(&mut self) {
        self.pool.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_bound_records_and_bytes_and_release_on_drop() {
        let conn = Budget::new(2, 100);
        let global = Budget::new(3, 150);
        let a = Reservation::try_reserve(&conn, &global, 60).expect("room");
        assert!(
            Reservation::try_reserve(&conn, &global, 60).is_none(),
            "connection bytes"
        );
        let b = Reservation::try_reserve(&conn, &global, 40).expect("room");
        assert!(
            Reservation::try_reserve(&conn, &global, 1).is_none(),
            "connection records"
        );
        let other = Budget::new(10, 1000);
        assert!(
            Reservation::try_reserve(&other, &global, 60).is_none(),
            "global bytes"
        );
        let waiting = tokio::spawn(Reservation::reserve(other.clone(), global.clone(), 60));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        let c = waiting.await.expect("reserved once room was made");
        assert_eq!(global.records_in_use(3), 2);
        drop((b, c));
        assert_eq!(global.records_in_use(3), 0);
        // Larger than the whole budget: takes all of it instead of waiting forever.
        let all = Reservation::try_reserve(&conn, &global, 10_000).expect("clamped");
        assert!(Reservation::try_reserve(&other, &global, 1).is_none());
        drop(all);
    }

    #[test]
    fn buffer_shares_add_up_and_are_given_back() {
        let pool = Buffers::new(100);
        let mut a = BufferShare::new(pool.clone());
        let mut b = BufferShare::new(pool.clone());
        assert!(!a.set(60));
        assert!(b.set(50), "110 of 100");
        assert!(!a.set(10));
        drop(b);
        assert!(!pool.full());
        assert!(a.set(100));
        drop(a);
        assert_eq!(pool.held.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn connections_held_back_are_woken_when_there_is_room() {
        let pool = Buffers::new(100);
        let mut a = BufferShare::new(pool.clone());
        assert!(a.set(150));
        let room = pool.room();
        tokio::pin!(room);
        room.as_mut().enable();
        assert!(pool.full());
        a.set(40);
        tokio::time::timeout(std::time::Duration::from_secs(1), room)
            .await
            .expect("woken");
    }
}
