//! The CopyData envelope of the streaming replication protocol: pure encoding and decoding,
//! no IO.
//!
//! After `START_REPLICATION SLOT ... LOGICAL ...` the server switches the connection to
//! COPY BOTH mode. The payload of every CopyData message it sends is one of
//!
//! * **XLogData** (`'w'`): `Int64` WAL start of the data, `Int64` current end of WAL on the
//!   server, `Int64` server clock (microseconds since 2000-01-01 UTC), then the data itself —
//!   for a logical slot, exactly one output plugin message (for `pgoutput`, see
//!   [`super::pgoutput::decode`]).
//! * **Primary keepalive** (`'k'`): `Int64` current end of WAL on the server, `Int64` server
//!   clock, `Byte1` reply requested. When the reply flag is set the client must answer with a
//!   standby status update soon, or the server drops the connection at `wal_sender_timeout`.
//!
//! The client sends, also inside CopyData, the **standby status update** (`'r'`): `Int64`
//! written, `Int64` flushed and `Int64` applied positions (each "last byte + 1"), `Int64`
//! client clock and `Byte1` "reply requested". For a logical slot the flushed position is the
//! one that matters: the server may discard WAL before it and will not resend transactions
//! whose commit ends at or before it, so a consumer must only report positions (a commit's
//! `end_lsn`) whose effects are durably handled.
//!
//! All integers are big-endian. [`parse_copy_data`] slices the XLogData payload out of the
//! given buffer without copying.

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};

use super::Lsn;

/// Tag of an XLogData message (server to client).
pub const XLOG_DATA_TAG: u8 = b'w';
/// Tag of a primary keepalive message (server to client).
pub const PRIMARY_KEEPALIVE_TAG: u8 = b'k';
/// Tag of a standby status update (client to server).
pub const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';

/// Length of the XLogData header: tag and three `Int64`s; the data follows.
pub const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// Length of a primary keepalive message.
pub const PRIMARY_KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Length of a standby status update message.
pub const STANDBY_STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// Seconds from the Unix epoch to the PostgreSQL epoch (2000-01-01 00:00:00 UTC).
pub const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
const PG_EPOCH_UNIX_MICROS: i64 = PG_EPOCH_UNIX_SECONDS * 1_000_000;

/// A server-to-client message of the streaming replication protocol (a CopyData payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `'w'`: a piece of the stream; for a logical slot, one output plugin message in `data`.
    XLogData {
        /// WAL position the data starts at (for pgoutput, the LSN of the decoded record;
        /// may be 0 for messages that have no position of their own).
        wal_start: Lsn,
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock when sent, microseconds since 2000-01-01 UTC.
        send_time_us: i64,
        /// The payload; a slice of the buffer given to [`parse_copy_data`].
        data: Bytes,
    },
    /// `'k'`: server heartbeat.
    PrimaryKeepalive {
        /// Current end of WAL on the server.
        wal_end: Lsn,
        /// Server clock when sent, microseconds since 2000-01-01 UTC.
        send_time_us: i64,
        /// The server wants a standby status update right away.
        reply_requested: bool,
    },
}

impl ReplicationMessage {
    /// Encodes the message as a CopyData payload (the inverse of [`parse_copy_data`]); useful
    /// for test servers.
    pub fn encode(&self) -> Bytes {
        match self {
            ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time_us,
                data,
            } => {
                let mut out = BytesMut::with_capacity(XLOG_DATA_HEADER_LEN + data.len());
                out.put_u8(XLOG_DATA_TAG);
                out.put_u64(wal_start.0);
                out.put_u64(wal_end.0);
                out.put_i64(*send_time_us);
                out.put_slice(data);
                out.freeze()
            }
            ReplicationMessage::PrimaryKeepalive {
                wal_end,
                send_time_us,
                reply_requested,
            } => {
                let mut out = BytesMut::with_capacity(PRIMARY_KEEPALIVE_LEN);
                out.put_u8(PRIMARY_KEEPALIVE_TAG);
                out.put_u64(wal_end.0);
                out.put_i64(*send_time_us);
                out.put_u8(u8::from(*reply_requested));
                out.freeze()
            }
        }
    }
}

/// Why a CopyData payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("empty CopyData payload in the replication stream")]
    Empty,
    #[error("truncated {what}: {needed} bytes needed, {available} present")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("unknown replication message tag 0x{0:02x}")]
    UnknownTag(u8),
    #[error("{count} unexpected trailing bytes after a {what}")]
    TrailingBytes { what: &'static str, count: usize },
}

/// Decodes one CopyData payload received from the server during replication.
pub fn parse_copy_data(buf: Bytes) -> Result<ReplicationMessage, CopyError> {
    let tag = *buf.first().ok_or(CopyError::Empty)?;
    match tag {
        XLOG_DATA_TAG => {
            let what = "XLogData header";
            check_len(&buf, XLOG_DATA_HEADER_LEN, what)?;
            Ok(ReplicationMessage::XLogData {
                wal_start: Lsn(be_u64(&buf, 1)),
                wal_end: Lsn(be_u64(&buf, 9)),
                send_time_us: be_u64(&buf, 17) as i64,
                data: buf.slice(XLOG_DATA_HEADER_LEN..),
            })
        }
        PRIMARY_KEEPALIVE_TAG => {
            let what = "primary keepalive message";
            check_len(&buf, PRIMARY_KEEPALIVE_LEN, what)?;
            check_no_trailing(&buf, PRIMARY_KEEPALIVE_LEN, what)?;
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(be_u64(&buf, 1)),
                send_time_us: be_u64(&buf, 9) as i64,
                reply_requested: buf[17] != 0,
            })
        }
        other => Err(CopyError::UnknownTag(other)),
    }
}

/// A client-to-server standby status update (`'r'`), as decoded by
/// [`StandbyStatusUpdate::parse`] (for test servers; clients build the bytes with
/// [`encode_standby_status_update`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
    pub client_time_us: i64,
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Decodes a standby status update CopyData payload.
    pub fn parse(buf: &[u8]) -> Result<StandbyStatusUpdate, CopyError> {
        let what = "standby status update";
        let tag = *buf.first().ok_or(CopyError::Empty)?;
        if tag != STANDBY_STATUS_UPDATE_TAG {
            return Err(CopyError::UnknownTag(tag));
        }
        check_len(buf, STANDBY_STATUS_UPDATE_LEN, what)?;
        check_no_trailing(buf, STANDBY_STATUS_UPDATE_LEN, what)?;
        Ok(StandbyStatusUpdate {
            write: Lsn(be_u64(buf, 1)),
            flush: Lsn(be_u64(buf, 9)),
            apply: Lsn(be_u64(buf, 17)),
            client_time_us: be_u64(buf, 25) as i64,
            reply_requested: buf[33] != 0,
        })
    }

    /// Encodes the update; same as [`encode_standby_status_update`].
    pub fn encode(&self) -> Bytes {
        encode_standby_status_update(
            self.write,
            self.flush,
            self.apply,
            self.client_time_us,
            self.reply_requested,
        )
    }
}

/// Builds the body of a standby status update (`'r'`), to be sent as the payload of a
/// CopyData message (the CopyData framing itself is not included).
///
/// `write`, `flush` and `apply` are "last WAL byte + 1" positions; for a logical consumer all
/// three are normally the `end_lsn` of the last commit whose effects are durably handled.
/// `client_time_us` is microseconds since 2000-01-01 UTC (see [`pg_epoch_micros`]).
pub fn encode_standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time_us: i64,
    reply_requested: bool,
) -> Bytes {
    let mut out = BytesMut::with_capacity(STANDBY_STATUS_UPDATE_LEN);
    out.put_u8(STANDBY_STATUS_UPDATE_TAG);
    out.put_u64(write.0);
    out.put_u64(flush.0);
    out.put_u64(apply.0);
    out.put_i64(client_time_us);
    out.put_u8(u8::from(reply_requested));
    out.freeze()
}

/// Microseconds from the PostgreSQL epoch (2000-01-01 00:00:00 UTC) to `now`; negative
/// before it. This is the clock format of the replication protocol and of pgoutput
/// commit timestamps.
pub fn pg_epoch_micros(now: DateTime<Utc>) -> i64 {
    now.timestamp_micros().saturating_sub(PG_EPOCH_UNIX_MICROS)
}

/// The inverse of [`pg_epoch_micros`]: the instant `micros` microseconds after
/// 2000-01-01 00:00:00 UTC, or `None` if it is outside chrono's range.
pub fn from_pg_epoch_micros(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros.checked_add(PG_EPOCH_UNIX_MICROS)?)
}

fn check_len(buf: &[u8], needed: usize, what: &'static str) -> Result<(), CopyError> {
    if buf.len() < needed {
        return Err(CopyError::Truncated {
            what,
            needed,
            available: buf.len(),
        });
    }
    Ok(())
}

fn check_no_trailing(buf: &[u8], len: usize, what: &'static str) -> Result<(), CopyError> {
    if buf.len() > len {
        return Err(CopyError::TrailingBytes {
            what,
            count: buf.len() - len,
        });
    }
    Ok(())
}

/// Big-endian `u64` at `at`; the caller has checked the length.
fn be_u64(buf: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{self, PgOutputMessage};
    use chrono::TimeZone;

    const FRAMES: &str = include_str!("../../tests/fixtures/pgoutput/frames.txt");

    /// Bytes of the captured pgoutput message named `name` in the fixture file.
    fn fixture(name: &str) -> Bytes {
        let line = FRAMES
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("fixture {name} missing"));
        let hex = line.split(' ').nth(3).expect("hex column");
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect::<Vec<u8>>();
        Bytes::from(bytes)
    }

    /// An XLogData frame written byte by byte from the documented layout.
    fn handmade_xlog_data(payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![b'w'];
        frame.extend_from_slice(&[0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD8, 0x48]); // start 16/B374D848
        frame.extend_from_slice(&[0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD9, 0x00]); // end 16/B374D900
        frame.extend_from_slice(&[0x00, 0x02, 0xB0, 0xEC, 0x85, 0x15, 0xF3, 0x40]); // 2024-01-02 03:04:05
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn decodes_xlog_data_and_slices_the_payload() {
        let payload = fixture("insert.4.commit");
        let buf = Bytes::from(handmade_xlog_data(&payload));
        let msg = parse_copy_data(buf.clone()).unwrap();
        let ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            send_time_us,
            data,
        } = msg
        else {
            panic!("expected XLogData, got {msg:?}");
        };
        assert_eq!(wal_start.to_string(), "16/B374D848");
        assert_eq!(wal_end.to_string(), "16/B374D900");
        assert_eq!(
            from_pg_epoch_micros(send_time_us).unwrap(),
            Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()
        );
        assert_eq!(data, payload);
        // Zero copy: the payload points into the frame.
        assert_eq!(data.as_ptr(), buf[XLOG_DATA_HEADER_LEN..].as_ptr());
        let PgOutputMessage::Commit(commit) = pgoutput::decode(data).unwrap() else {
            panic!("expected a commit");
        };
        assert!(commit.end_lsn > commit.commit_lsn);
    }

    #[test]
    fn xlog_data_may_have_an_empty_payload() {
        let msg = parse_copy_data(Bytes::from(handmade_xlog_data(&[]))).unwrap();
        assert!(matches!(msg, ReplicationMessage::XLogData { data, .. } if data.is_empty()));
    }

    #[test]
    fn decodes_primary_keepalive() {
        let mut frame = vec![b'k'];
        frame.extend_from_slice(&[0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05]); // 1/2030405
        frame.extend_from_slice(&1_000_002i64.to_be_bytes());
        frame.push(1);
        assert_eq!(frame.len(), PRIMARY_KEEPALIVE_LEN);
        let msg = parse_copy_data(Bytes::from(frame.clone())).unwrap();
        assert_eq!(
            msg,
            ReplicationMessage::PrimaryKeepalive {
                wal_end: "1/2030405".parse().unwrap(),
                send_time_us: 1_000_002,
                reply_requested: true,
            }
        );
        assert_eq!(&msg.encode()[..], &frame[..]);

        frame[17] = 0;
        let msg = parse_copy_data(Bytes::from(frame)).unwrap();
        assert!(matches!(
            msg,
            ReplicationMessage::PrimaryKeepalive {
                reply_requested: false,
                ..
            }
        ));
    }

    #[test]
    fn rejects_malformed_frames() {
        assert_eq!(parse_copy_data(Bytes::new()), Err(CopyError::Empty));
        assert_eq!(
            parse_copy_data(Bytes::from_static(b"d\x00")),
            Err(CopyError::UnknownTag(b'd'))
        );
        let keepalive = ReplicationMessage::PrimaryKeepalive {
            wal_end: Lsn(7),
            send_time_us: -3,
            reply_requested: false,
        }
        .encode();
        let xlog = Bytes::from(handmade_xlog_data(b"B"));
        for frame in [&keepalive, &xlog] {
            let full_len = if frame[0] == b'k' {
                frame.len()
            } else {
                XLOG_DATA_HEADER_LEN
            };
            for len in 1..full_len {
                let err = parse_copy_data(frame.slice(..len)).unwrap_err();
                assert!(
                    matches!(err, CopyError::Truncated { needed, available, .. }
                        if needed == full_len && available == len),
                    "{err}"
                );
            }
        }
        let mut long = keepalive.to_vec();
        long.push(0);
        assert_eq!(
            parse_copy_data(Bytes::from(long)),
            Err(CopyError::TrailingBytes {
                what: "primary keepalive message",
                count: 1
            })
        );
    }

    #[test]
    fn encodes_the_documented_standby_status_update_layout() {
        let write: Lsn = "16/B374D848".parse().unwrap();
        let flush: Lsn = "16/B374D800".parse().unwrap();
        let apply: Lsn = "0/0".parse().unwrap();
        let time = pg_epoch_micros(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap());
        let body = encode_standby_status_update(write, flush, apply, time, true);
        let expected: [u8; STANDBY_STATUS_UPDATE_LEN] = [
            b'r', //
            0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD8, 0x48, // written
            0x00, 0x00, 0x00, 0x16, 0xB3, 0x74, 0xD8, 0x00, // flushed
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // applied
            0x00, 0x02, 0xB0, 0xEC, 0x85, 0x15, 0xF3, 0x40, // client clock
            0x01, // reply requested
        ];
        assert_eq!(&body[..], &expected[..]);

        let parsed = StandbyStatusUpdate::parse(&body).unwrap();
        assert_eq!(
            parsed,
            StandbyStatusUpdate {
                write,
                flush,
                apply,
                client_time_us: time,
                reply_requested: true
            }
        );
        assert_eq!(parsed.encode(), body);

        let no_reply = encode_standby_status_update(write, write, write, -1, false);
        assert_eq!(no_reply[33], 0);
        assert_eq!(
            StandbyStatusUpdate::parse(&no_reply)
                .unwrap()
                .client_time_us,
            -1
        );
        for len in 0..STANDBY_STATUS_UPDATE_LEN {
            assert!(StandbyStatusUpdate::parse(&body[..len]).is_err());
        }
        assert_eq!(
            StandbyStatusUpdate::parse(b"k"),
            Err(CopyError::UnknownTag(b'k'))
        );
    }

    #[test]
    fn pg_epoch_is_2000_01_01_utc() {
        let epoch = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(pg_epoch_micros(epoch), 0);
        assert_eq!(
            pg_epoch_micros(epoch + chrono::Duration::microseconds(1_000_002)),
            1_000_002
        );
        assert_eq!(
            pg_epoch_micros(Utc.with_ymd_and_hms(1999, 12, 31, 23, 59, 59).unwrap()),
            -1_000_000
        );
        assert_eq!(from_pg_epoch_micros(0), Some(epoch));
        assert_eq!(from_pg_epoch_micros(i64::MAX), None);
        let now = Utc::now();
        let round = from_pg_epoch_micros(pg_epoch_micros(now)).unwrap();
        assert_eq!(round.timestamp_micros(), now.timestamp_micros());
    }

    #[test]
    fn pg_epoch_matches_a_commit_timestamp_set_on_the_server() {
        // The capture script commits the `origin` transaction with
        // pg_replication_origin_xact_setup(..., '2024-01-02 03:04:05+00'), which PostgreSQL
        // reports as the commit timestamp.
        let PgOutputMessage::Begin(begin) = pgoutput::decode(fixture("origin.1.begin")).unwrap()
        else {
            panic!("expected a begin");
        };
        let expected = Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(begin.commit_time_us, pg_epoch_micros(expected));
        assert_eq!(from_pg_epoch_micros(begin.commit_time_us), Some(expected));
    }
}
