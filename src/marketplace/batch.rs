//! Batch results (Trendyol) and upload statuses (Hepsiburada) -> [`BatchStatus`].

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Value};

use super::classify::{clip, Mask};
use super::{fold_sku, BatchStatus, ItemResult, Provider};

/// Reason of an item a complete Trendyol result does not mention.
pub(crate) const MISSING_FROM_RESULT: &str = "item missing from the batch result";

/// Parses a 2xx batch result / upload status body. `request_keys` are the item keys of
/// the original request in order. `Err` means the body is not a readable result.
///
/// * Trendyol: `Pending` while `items` is empty or shorter than `itemCount` (or the
///   number of request keys when `itemCount` is absent), or while a batch-level
///   `status` says it is still running; then items are matched to request positions
///   by `requestItem.barcode`. `SUCCESS` succeeds; `FAILED` fails with its
///   `failureReasons`; an item-level in-progress status keeps the batch `Pending`.
/// * Hepsiburada: the `status` word is read case-insensitively, ignoring `_` ([`UploadWord`]):
///   a known "still working" word is `Pending`, a word never seen is `UnknownStatus` (pending,
///   but worth a warning), success and partial success are `Done` with the failing rows,
///   failure fails every item without a row of its own. Error rows are matched by
///   `merchantSku` ([`fold_sku`]: case-insensitively, Turkish `İ`/`ı` included; `elementNo`'s
///   base is unconfirmed, so it is not used); a row that names no request item (no
///   `merchantSku`, only a `hepsiburadaSku`, or a sku not sent) makes the whole upload
///   `OutcomeUnknown`.
///
/// Every text quoted from the body (failure reasons, status words, the body itself) is
/// masked whole with `mask` before it is cut.
///
/// Trendyol removes spaces inside barcodes, so barcodes are compared without whitespace.
/// Failure reasons that name a listing state only a person can change (a campaign forbidding
/// decreases, a locked, frozen or suspended listing) mark the item `permanent`.
pub fn parse_batch_status(
    provider: Provider,
    body: &str,
    request_keys: &[String],
    mask: Mask<'_>,
) -> Result<BatchStatus, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| {
        format!(
            "batch status is not JSON ({e}): {}",
            clip(&mask(body.trim()), 200)
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(format!(
            "batch status is not a JSON object: {}",
            clip(&mask(body.trim()), 200)
        ));
    };
    match provider {
        Provider::Trendyol => trendyol(&obj, request_keys),
        Provider::Hepsiburada => hepsiburada(&obj, request_keys, mask),
    }
}

fn upper_str(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .map(|s| s.trim().to_ascii_uppercase())
}

/// Statuses that mean "not finished yet".
fn in_progress(status: &str) -> bool {
    matches!(
        status,
        "IN_PROGRESS" | "PROCESSING" | "PENDING" | "WAITING" | "CREATED" | "QUEUED" | "RUNNING"
    )
}

/// Strings of a reasons list (strings, or objects with a message).
fn reasons_of(v: Option<&Value>) -> Vec<String> {
    fn one(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.trim().to_string()),
            Value::Object(o) => ["message", "reason", "description", "text", "key"]
                .iter()
                .find_map(|n| o.get(*n).and_then(Value::as_str))
                .map(|s| s.trim().to_string()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
        .filter(|s| !s.is_empty())
    }
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Request positions by normalised key (a key repeated in the request yields its positions
/// in order).
fn positions(
    request_keys: &[String],
    normalise: fn(&str) -> String,
) -> HashMap<String, VecDeque<usize>> {
    let mut map: HashMap<String, VecDeque<usize>> = HashMap::new();
    for (i, k) in request_keys.iter().enumerate() {
        map.entry(normalise(k)).or_default().push_back(i);
    }
    map
}

/// A Trendyol barcode as Trendyol keeps it: without whitespace.
fn trendyol_barcode(k: &str) -> String {
    k.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Failure codes of listings that refuse stock updates until a person acts (a campaign that
/// forbids decreases, a locked, frozen or suspended listing). Matched as whole words of a
/// reason, case-insensitively.
const PERMANENT_CODES: [&str; 8] = [
    "discountedlistingstockdecrease",
    "stockdecreasedisabled",
    "listinglocked",
    "islocked",
    "listingfrozen",
    "isfrozen",
    "listingsuspended",
    "issuspended",
];

/// Failure codes of a listing Hepsiburada fulfils from its own warehouse
/// (`isFulfilledByHB`): it keeps the stock, so stocksync must stop pushing it. Matched as
/// whole words of a reason, case-insensitively.
const FULFILLED_CODES: [&str; 3] = ["isfulfilledbyhb", "fulfilledbyhb", "listingfulfilledbyhb"];

/// Whether a failure reason says the marketplace fulfils the listing itself.
pub fn is_fulfilled_by_marketplace(reason: &str) -> bool {
    reason
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| FULFILLED_CODES.contains(&word.to_ascii_lowercase().as_str()))
}

/// Whether a failure reason names a listing state only a person can change.
pub(crate) fn is_permanent(reason: &str) -> bool {
    reason
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| PERMANENT_CODES.contains(&word.to_ascii_lowercase().as_str()))
}

fn trendyol(obj: &Map<String, Value>, request_keys: &[String]) -> Result<BatchStatus, String> {
    if upper_str(obj.get("status")).is_some_and(|s| in_progress(&s)) {
        return Ok(BatchStatus::Pending);
    }
    let items: &[Value] = match obj.get("items") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => &[],
        Some(_) => return Err("Trendyol batch result: \"items\" is not an array".into()),
    };
    let expected = obj
        .get("itemCount")
        .and_then(Value::as_u64)
        .map_or(request_keys.len(), |n| n as usize);
    if items.is_empty() || items.len() < expected {
        return Ok(BatchStatus::Pending);
    }
    let mut slots: Vec<Option<ItemResult>> = vec![None; request_keys.len()];
    let mut free = positions(request_keys, trendyol_barcode);
    for item in items {
        let barcode = item
            .get("requestItem")
            .and_then(|r| r.get("barcode"))
            .or_else(|| item.get("barcode"))
            .and_then(Value::as_str);
        let Some(barcode) = barcode else {
            tracing::debug!("Trendyol batch result item without a barcode: {item}");
            continue;
        };
        let Some(index) = free
            .get_mut(&trendyol_barcode(barcode))
            .and_then(VecDeque::pop_front)
        else {
            tracing::debug!(
                barcode,
                "Trendyol batch result names a barcode not in the request"
            );
            continue;
        };
        let status = upper_str(item.get("status")).unwrap_or_default();
        let mut reasons = reasons_of(item.get("failureReasons"));
        let success = match status.as_str() {
            "SUCCESS" => {
                // Reasons on a successful item are warnings; keep success clean.
                reasons.clear();
                true
            }
            "FAILED" => {
                if reasons.is_empty() {
                    reasons.push("FAILED without a reason".into());
                }
                false
            }
            s if in_progress(s) => return Ok(BatchStatus::Pending),
            s => {
                reasons.insert(
                    0,
                    if s.is_empty() {
                        "item without a status".to_string()
                    } else {
                        format!("unexpected item status {s}")
                    },
                );
                false
            }
        };
        slots[index] = Some(ItemResult {
            index,
            key: request_keys[index].clone(),
            success,
            permanent: !success && reasons.iter().any(|r| is_permanent(r)),
            reasons,
        });
    }
    let results = slots
        .into_iter()
        .enumerate()
        .map(|(index, slot)| {
            slot.unwrap_or_else(|| ItemResult {
                index,
                key: request_keys[index].clone(),
                success: false,
                reasons: vec![MISSING_FROM_RESULT.to_string()],
                permanent: false,
            })
        })
        .collect();
    Ok(BatchStatus::Done(results))
}

/// What a Hepsiburada upload `status` word says, read case-insensitively and ignoring `_`
/// (production answers `Done`; clients have seen `Completed`, `COMPLETED_WITH_ERRORS`,
/// `Failed`, `InProgress`, `PROCESSING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadWord {
    Succeeded,
    /// Done, with the failing rows listed.
    Partial,
    Failed,
    Working,
    /// A word no client has seen: still pending, never success.
    Unknown,
}

impl UploadWord {
    pub fn read(word: &str) -> UploadWord {
        let folded: String = word
            .chars()
            .filter(|c| *c != '_' && !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        match folded.as_str() {
            "done" | "completed" | "complete" | "success" | "succeeded" | "finished" => {
                UploadWord::Succeeded
            }
            "completedwitherrors" | "partiallycompleted" | "donewitherrors" => UploadWord::Partial,
            "failed" | "fail" | "error" => UploadWord::Failed,
            "processing" | "inprogress" | "pending" | "waiting" | "created" | "queued"
            | "running" | "received" | "accepted" => UploadWord::Working,
            _ => UploadWord::Unknown,
        }
    }
}

fn hepsiburada(
    obj: &Map<String, Value>,
    request_keys: &[String],
    mask: Mask<'_>,
) -> Result<BatchStatus, String> {
    let status = match obj.get("status") {
        Some(Value::String(s)) => s.trim().to_string(),
        // `null` (or no word at all) is still pending.
        None | Some(Value::Null) => return Ok(BatchStatus::Pending),
        Some(other) => other.to_string(),
    };
    let failed_upload = match UploadWord::read(&status) {
        UploadWord::Succeeded | UploadWord::Partial => false,
        UploadWord::Failed => true,
        UploadWord::Working => return Ok(BatchStatus::Pending),
        UploadWord::Unknown => return Ok(BatchStatus::UnknownStatus(clip(&mask(&status), 64))),
    };
    let errors: &[Value] = match obj.get("errors") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => &[],
        Some(_) => return Err("Hepsiburada upload status: \"errors\" is not an array".into()),
    };
    let by_sku = positions(request_keys, fold_sku);
    let mut reasons: Vec<Option<Vec<String>>> = vec![None; request_keys.len()];
    for e in errors {
        let mut texts = reasons_of(e.get("errors"));
        if texts.is_empty() {
            texts = reasons_of(e.get("message"));
        }
        if texts.is_empty() {
            texts.push("element failed without a reason".into());
        }
        let sku = e.get("merchantSku").and_then(Value::as_str);
        let Some(positions) = sku.and_then(|s| by_sku.get(&fold_sku(s))) else {
            // Which item failed is unknown, so nothing of this upload can be believed.
            let named = sku.map_or_else(
                || "no merchantSku".to_string(),
                |s| format!("merchantSku {s:?}"),
            );
            return Ok(BatchStatus::OutcomeUnknown(format!(
                "an error row with {named} matches no item of the upload: {}",
                clip(&mask(&texts.join("; ")), 300)
            )));
        };
        for i in positions {
            reasons[*i]
                .get_or_insert_with(Vec::new)
                .extend(texts.iter().cloned());
        }
    }
    let results = request_keys
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let (success, reasons) = match reasons[index].take() {
                Some(r) => (false, r),
                None if failed_upload => (false, vec![format!("upload {status}")]),
                None => (true, Vec::new()),
            };
            ItemResult {
                index,
                key: key.clone(),
                success,
                permanent: !success && reasons.iter().any(|r| is_permanent(r)),
                reasons,
            }
        })
        .collect();
    Ok(BatchStatus::Done(results))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_batch_status(p: Provider, body: &str, keys: &[String]) -> Result<BatchStatus, String> {
        super::parse_batch_status(p, body, keys, &|s: &str| s.to_string())
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    fn done(s: Result<BatchStatus, String>) -> Vec<ItemResult> {
        match s {
            Ok(BatchStatus::Done(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    fn ok(index: usize, key: &str) -> ItemResult {
        ItemResult {
            index,
            key: key.into(),
            success: true,
            reasons: vec![],
            permanent: false,
        }
    }

    fn failed(index: usize, key: &str, reasons: &[&str]) -> ItemResult {
        ItemResult {
            index,
            key: key.into(),
            success: false,
            reasons: reasons.iter().map(|s| s.to_string()).collect(),
            permanent: false,
        }
    }

    const TY_DONE: &str = r#"{
        "batchRequestId": "b-1700000000",
        "items": [
            {"requestItem": {"barcode": "B2", "quantity": 0}, "status": "SUCCESS", "failureReasons": []},
            {"requestItem": {"barcode": "B1", "quantity": 5}, "status": "FAILED",
             "failureReasons": ["Ürün bulunamadı: barcode is not listed by this seller"]}
        ],
        "itemCount": 2, "failedItemCount": 1,
        "batchRequestType": "ProductInventoryUpdate",
        "creationDate": 1700000000000, "lastModification": 1700000001000
    }"#;

    #[test]
    fn trendyol_done_matched_by_barcode() {
        let r = done(parse_batch_status(
            Provider::Trendyol,
            TY_DONE,
            &keys(&["B1", "B2"]),
        ));
        assert_eq!(
            r,
            vec![
                failed(
                    0,
                    "B1",
                    &["Ürün bulunamadı: barcode is not listed by this seller"]
                ),
                ok(1, "B2"),
            ]
        );
    }

    #[test]
    fn trendyol_pending() {
        let k = keys(&["B1", "B2"]);
        for body in [
            r#"{"batchRequestId":"x","items":[],"itemCount":2,"failedItemCount":0}"#,
            r#"{"batchRequestId":"x","itemCount":2}"#,
            r#"{"batchRequestId":"x","items":null}"#,
            r#"{"batchRequestId":"x","items":[{"requestItem":{"barcode":"B1"},"status":"SUCCESS"}],"itemCount":2}"#,
            // itemCount absent: the request size counts.
            r#"{"batchRequestId":"x","items":[{"requestItem":{"barcode":"B1"},"status":"SUCCESS"}]}"#,
            r#"{"batchRequestId":"x","status":"IN_PROGRESS","items":[{"requestItem":{"barcode":"B1"},"status":"SUCCESS"},{"requestItem":{"barcode":"B2"},"status":"SUCCESS"}]}"#,
            r#"{"batchRequestId":"x","items":[{"requestItem":{"barcode":"B1"},"status":"SUCCESS"},{"requestItem":{"barcode":"B2"},"status":"PENDING"}]}"#,
        ] {
            assert_eq!(
                parse_batch_status(Provider::Trendyol, body, &k),
                Ok(BatchStatus::Pending),
                "{body}"
            );
        }
    }

    #[test]
    fn trendyol_missing_unknown_and_odd_items() {
        // itemCount says 2 and two items came, but one names a barcode we never sent:
        // B2 is missing from a complete result.
        let body = r#"{"items":[
            {"requestItem":{"barcode":"B1"},"status":"SUCCESS","failureReasons":[]},
            {"requestItem":{"barcode":"ZZ"},"status":"SUCCESS","failureReasons":[]}
        ],"itemCount":2,"status":"COMPLETED"}"#;
        let r = done(parse_batch_status(
            Provider::Trendyol,
            body,
            &keys(&["B1", "B2"]),
        ));
        assert_eq!(
            r,
            vec![ok(0, "B1"), failed(1, "B2", &[MISSING_FROM_RESULT])]
        );

        let body = r#"{"items":[
            {"requestItem":{"barcode":"B1"},"status":"FAILED"},
            {"requestItem":{"barcode":"B2"},"status":"WEIRD","failureReasons":[{"message":"m"}]}
        ],"itemCount":2}"#;
        let r = done(parse_batch_status(
            Provider::Trendyol,
            body,
            &keys(&["B1", "B2"]),
        ));
        assert_eq!(
            r,
            vec![
                failed(0, "B1", &["FAILED without a reason"]),
                failed(1, "B2", &["unexpected item status WEIRD", "m"]),
            ]
        );
    }

    #[test]
    fn unreadable_bodies() {
        let k = keys(&["A"]);
        for p in [Provider::Trendyol, Provider::Hepsiburada] {
            assert!(parse_batch_status(p, "not json", &k).is_err());
            assert!(parse_batch_status(p, "[]", &k).is_err());
        }
        assert!(parse_batch_status(Provider::Trendyol, r#"{"items":{}}"#, &k).is_err());
        // No status word at all is still pending (as `null`), not an unreadable body.
        assert_eq!(
            parse_batch_status(Provider::Hepsiburada, r#"{"id":"x"}"#, &k),
            Ok(BatchStatus::Pending)
        );
        assert!(parse_batch_status(
            Provider::Hepsiburada,
            r#"{"status":"FAILED","errors":5}"#,
            &k
        )
        .is_err());
    }

    #[test]
    fn trendyol_results_match_barcodes_without_spaces() {
        let body = r#"{"items":[
            {"requestItem":{"barcode":"8690001"},"status":"SUCCESS"},
            {"requestItem":{"barcode":"B 2"},"status":"FAILED","failureReasons":["x"]}
        ],"itemCount":2}"#;
        assert_eq!(
            done(parse_batch_status(
                Provider::Trendyol,
                body,
                &keys(&["869 0001", "B2"])
            )),
            vec![ok(0, "869 0001"), failed(1, "B2", &["x"])]
        );
    }

    #[test]
    fn upload_words_are_read_case_insensitively_without_underscores() {
        for (word, meaning) in [
            ("Done", UploadWord::Succeeded),
            ("DONE", UploadWord::Succeeded),
            ("Completed", UploadWord::Succeeded),
            ("COMPLETED_WITH_ERRORS", UploadWord::Partial),
            ("CompletedWithErrors", UploadWord::Partial),
            ("Failed", UploadWord::Failed),
            ("FAILED", UploadWord::Failed),
            ("InProgress", UploadWord::Working),
            ("IN_PROGRESS", UploadWord::Working),
            ("PROCESSING", UploadWord::Working),
            ("Gelecek", UploadWord::Unknown),
            ("", UploadWord::Unknown),
        ] {
            assert_eq!(UploadWord::read(word), meaning, "{word}");
        }
    }

    #[test]
    fn hepsiburada_pending() {
        let k = keys(&["S1"]);
        for status in ["PROCESSING", "processing", "QUEUED", "InProgress"] {
            let body = format!(
                r#"{{"id":"u","status":"{status}","createdAt":"2024-01-01T00:00:00.000Z","total":1,"errors":[]}}"#
            );
            assert_eq!(
                parse_batch_status(Provider::Hepsiburada, &body, &k),
                Ok(BatchStatus::Pending)
            );
        }
        assert_eq!(
            parse_batch_status(Provider::Hepsiburada, r#"{"status":null}"#, &k),
            Ok(BatchStatus::Pending)
        );
        assert_eq!(
            parse_batch_status(Provider::Hepsiburada, r#"{"status":"SOMETHING_NEW"}"#, &k),
            Ok(BatchStatus::UnknownStatus("SOMETHING_NEW".into())),
            "a new word is never success"
        );
    }

    #[test]
    fn hepsiburada_done_and_completed() {
        for word in ["Done", "COMPLETED", "Completed"] {
            let body = format!(r#"{{"id":"u","status":"{word}","total":2,"errors":[]}}"#);
            assert_eq!(
                done(parse_batch_status(
                    Provider::Hepsiburada,
                    &body,
                    &keys(&["S1", "S2"])
                )),
                vec![ok(0, "S1"), ok(1, "S2")]
            );
        }
    }

    #[test]
    fn hepsiburada_errors_by_sku() {
        let k = keys(&["S1", "S2", "S3"]);
        let body = r#"{"id":"u","status":"COMPLETED_WITH_ERRORS","total":3,"errors":[
            {"elementNo":7,"hepsiburadaSku":null,"merchantSku":"s2","errors":["Listing not found for this merchant"]}
        ]}"#;
        assert_eq!(
            done(parse_batch_status(Provider::Hepsiburada, body, &k)),
            vec![
                ok(0, "S1"),
                failed(1, "S2", &["Listing not found for this merchant"]),
                ok(2, "S3")
            ],
            "matched by sku, case-insensitively, whatever elementNo says"
        );
        let body = r#"{"status":"Done","errors":[
            {"merchantSku":"S3","errors":[{"message":"DiscountedListingStockDecrease"}]}
        ]}"#;
        let r = done(parse_batch_status(Provider::Hepsiburada, body, &k));
        assert!(r[2].permanent && !r[2].success, "{:?}", r[2]);
        assert!(r[0].success && r[1].success);
    }

    #[test]
    fn hepsiburada_failed() {
        let k = keys(&["S1", "S2"]);
        let body = r#"{"id":"u","status":"Failed","total":2,"errors":[]}"#;
        assert_eq!(
            done(parse_batch_status(Provider::Hepsiburada, body, &k)),
            vec![
                failed(0, "S1", &["upload Failed"]),
                failed(1, "S2", &["upload Failed"])
            ]
        );
        let body = r#"{"status":"FAILED","errors":[
            {"elementNo":0,"merchantSku":"S1","errors":["x"]},
            {"elementNo":1,"merchantSku":"S2","errors":[]}
        ]}"#;
        assert_eq!(
            done(parse_batch_status(Provider::Hepsiburada, body, &k)),
            vec![
                failed(0, "S1", &["x"]),
                failed(1, "S2", &["element failed without a reason"])
            ]
        );
    }

    #[test]
    fn hepsiburada_row_without_a_known_sku_makes_the_outcome_unknown() {
        let k = keys(&["S1", "S2"]);
        for row in [
            r#"{"elementNo":0,"errors":["x"]}"#,
            r#"{"elementNo":9,"merchantSku":"NOPE","errors":["y"]}"#,
        ] {
            let body = format!(r#"{{"status":"COMPLETED_WITH_ERRORS","errors":[{row}]}}"#);
            assert!(
                matches!(
                    parse_batch_status(Provider::Hepsiburada, &body, &k),
                    Ok(BatchStatus::OutcomeUnknown(_))
                ),
                "{row}"
            );
        }
    }

    #[test]
    fn hepsiburada_rows_match_skus_folded_the_turkish_way() {
        // Skus sent as the seller wrote them; the rows name them upper-cased the Turkish
        // way (i -> İ, ı -> I) or lower-cased from that (İ -> i + combining dot).
        let k = keys(&["kitap-1", "IŞIK-2", "çanta-ı"]);
        let body = r#"{"status":"COMPLETED_WITH_ERRORS","errors":[
            {"merchantSku":"KİTAP-1","errors":["a"]},
            {"merchantSku":"ışık-2","errors":["b"]},
            {"merchantSku":" ÇANTA-I ","errors":["c"]}
        ]}"#;
        assert_eq!(
            done(parse_batch_status(Provider::Hepsiburada, body, &k)),
            vec![
                failed(0, "kitap-1", &["a"]),
                failed(1, "IŞIK-2", &["b"]),
                failed(2, "çanta-ı", &["c"])
            ]
        );
        let body = r#"{"status":"COMPLETED_WITH_ERRORS","errors":[
            {"merchantSku":"ki\u0307tap-1","errors":["a"]}
        ]}"#;
        assert_eq!(
            done(parse_batch_status(Provider::Hepsiburada, body, &k))[0],
            failed(0, "kitap-1", &["a"])
        );
    }

    #[test]
    fn hepsiburada_row_naming_only_the_hepsiburada_sku_makes_the_outcome_unknown() {
        let k = keys(&["S1"]);
        let body = r#"{"status":"COMPLETED_WITH_ERRORS","errors":[
            {"elementNo":0,"hepsiburadaSku":"HBV00000000001","merchantSku":null,"errors":["x"]}
        ]}"#;
        assert!(matches!(
            parse_batch_status(Provider::Hepsiburada, body, &k),
            Ok(BatchStatus::OutcomeUnknown(_))
        ));
    }

    #[test]
    fn permanent_reasons_are_codes_not_prose() {
        assert!(is_permanent("DiscountedListingStockDecrease"));
        assert!(is_permanent("S1: ListingLocked (PriceCheck)"));
        assert!(!is_permanent("the listing is locked for a moment"));
        assert!(!is_permanent("Listing not found for this merchant"));
    }
}
