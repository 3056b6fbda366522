//! Whether committed transactions, named by the 32-bit xids pgoutput sends, are visible to
//! new snapshots yet (capture rule 7: queue rows are visible no earlier than the changes they
//! stand for).
//!
//! The walsender sends a commit once its WAL record is written, a moment before the
//! transaction is visible to other sessions. The snapshot's 64-bit txids are read from the
//! server; widening the 32-bit xids and the visibility test are pure ([`Snapshot`]).

/// The server's snapshot at this statement (read committed: a new one per look), as 64-bit
/// txids: `xmin`, `xmax` and the transactions in progress.
const SNAPSHOT_SQL: &str = r#"
SELECT txid_snapshot_xmin(s), txid_snapshot_xmax(s), array(SELECT txid_snapshot_xip(s))
FROM txid_current_snapshot() AS s
"#;

/// The server's snapshot now (a new one per call outside a repeatable-read transaction).
pub async fn current_snapshot(
    db: &impl tokio_postgres::GenericClient,
) -> Result<Snapshot, tokio_postgres::Error> {
    let row = db.query_one(SNAPSHOT_SQL, &[]).await?;
    Ok(Snapshot {
        xmin: row.get(0),
        xmax: row.get(1),
        in_progress: row.get(2),
    })
}

/// A snapshot's bounds in 64-bit txids (epoch in the high half).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every txid below it has completed.
    pub xmin: i64,
    /// The first txid not completed as far as this snapshot knows: it and everything above
    /// are invisible.
    pub xmax: i64,
    /// Txids between `xmin` and `xmax` still in progress.
    pub in_progress: Vec<i64>,
}

impl Snapshot {
    /// The 64-bit txid of a 32-bit xid: the one nearest `xmax`. A captured transaction was
    /// assigned its xid recently, so it is within 2^31 of `xmax` on either side; it can be
    /// above `xmax` while it is not yet visible (its commit is written, but an older
    /// transaction still runs, so `xmax` has not passed it).
    pub fn widen(&self, xid: u32) -> i64 {
        // The signed distance from xmax's low half, modulo 2^32.
        let distance = xid.wrapping_sub(self.xmax as u32) as i32;
        self.xmax + i64::from(distance)
    }

    /// Whether the transaction with 64-bit txid `txid` has completed in this snapshot.
    pub fn completed(&self, txid: i64) -> bool {
        txid < self.xmin || (txid < self.xmax && !self.in_progress.contains(&txid))
    }

    /// Whether every transaction `xids` (32-bit) is visible to this snapshot.
    pub fn all_visible(&self, xids: &[u32]) -> bool {
        xids.iter().all(|&xid| self.completed(self.widen(xid)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: i64 = 1 << 32;

    fn snapshot(xmin: i64, xmax: i64, in_progress: &[i64]) -> Snapshot {
        Snapshot {
            xmin,
            xmax,
            in_progress: in_progress.to_vec(),
        }
    }

    #[test]
    fn an_xid_ahead_of_xmax_is_not_visible_in_any_epoch() {
        // 1001 committed (its WAL written) while 1000 still runs: xmax has not passed 1000.
        for epoch in [0, EPOCH, 7 * EPOCH] {
            let s = snapshot(epoch + 1000, epoch + 1000, &[]);
            assert_eq!(s.widen(1001), epoch + 1001);
            assert!(!s.all_visible(&[1001]), "epoch {epoch}");
            assert!(!s.all_visible(&[1000]), "epoch {epoch}");
            assert!(s.all_visible(&[999]), "epoch {epoch}");
        }
    }

    #[test]
    fn transactions_in_progress_are_not_visible() {
        let s = snapshot(EPOCH + 990, EPOCH + 1000, &[EPOCH + 995]);
        assert!(s.all_visible(&[980, 990, 996, 999]));
        assert!(!s.all_visible(&[996, 995]));
        assert!(s.all_visible(&[]));
    }

    #[test]
    fn xids_across_the_wrap_take_the_neighbouring_epoch() {
        // xmax just past the wrap: an xid just below 2^32 is from the epoch before.
        let s = snapshot(EPOCH + 5, EPOCH + 10, &[]);
        assert_eq!(s.widen(u32::MAX), EPOCH - 1);
        assert!(s.all_visible(&[u32::MAX, 3]));
        // xmax just before the wrap: a small xid is from the next epoch, not yet visible.
        let s = snapshot(EPOCH - 20, EPOCH - 10, &[]);
        assert_eq!(s.widen(2), EPOCH + 2);
        assert!(!s.all_visible(&[2]));
        assert!(s.all_visible(&[u32::MAX - 20]));
    }
}
