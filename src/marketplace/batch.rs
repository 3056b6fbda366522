//! Batch results (Trendyol) and upload statuses (Hepsiburada) -> [`BatchStatus`].

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Value};

use super::classify::clip;
use super::{BatchStatus, ItemResult, Provider};

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
/// * Hepsiburada: `PROCESSING` or any status other than `COMPLETED`,
///   `COMPLETED_WITH_ERRORS`, `FAILED` is `Pending`. Error entries are matched by
///   `merchantSku`, else by `elementNo` (0-based; see the module docs). `FAILED`
///   without attributable errors fails every item.
pub fn parse_batch_status(
    provider: Provider,
    body: &str,
    request_keys: &[String],
) -> Result<BatchStatus, String> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| format!("batch status is not JSON ({e}): {}", clip(body.trim(), 200)))?;
    let Value::Object(obj) = value else {
        return Err(format!(
            "batch status is not a JSON object: {}",
            clip(body.trim(), 200)
        ));
    };
    match provider {
        Provider::Trendyol => trendyol(&obj, request_keys),
        Provider::Hepsiburada => hepsiburada(&obj, request_keys),
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

/// Request positions by key (a key repeated in the request yields its positions in
/// order).
fn positions(request_keys: &[String]) -> HashMap<&str, VecDeque<usize>> {
    let mut map: HashMap<&str, VecDeque<usize>> = HashMap::new();
    for (i, k) in request_keys.iter().enumerate() {
        map.entry(k.as_str()).or_default().push_back(i);
    }
    map
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
    let mut free = positions(request_keys);
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
        let Some(index) = free.get_mut(barcode).and_then(VecDeque::pop_front) else {
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
            key: barcode.to_string(),
            success,
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
            })
        })
        .collect();
    Ok(BatchStatus::Done(results))
}

/// An integer `elementNo` (a numeric string is tolerated).
fn element_no(e: &Value) -> Option<i64> {
    match e.get("elementNo")? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn hepsiburada(obj: &Map<String, Value>, request_keys: &[String]) -> Result<BatchStatus, String> {
    let Some(status) = upper_str(obj.get("status")) else {
        return Err("Hepsiburada upload status without \"status\"".into());
    };
    let failed_upload = match status.as_str() {
        "COMPLETED" | "COMPLETED_WITH_ERRORS" => false,
        "FAILED" => true,
        _ => return Ok(BatchStatus::Pending),
    };
    let errors: &[Value] = match obj.get("errors") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => &[],
        Some(_) => return Err("Hepsiburada upload status: \"errors\" is not an array".into()),
    };
    let n = request_keys.len();
    let by_key = positions(request_keys);
    let sku = |e: &Value| {
        e.get("merchantSku")
            .and_then(Value::as_str)
            .filter(|s| by_key.contains_key(s))
            .map(str::to_string)
    };

    // Numbering: 0-based unless the entries naming both a sku and an elementNo show
    // 1-based positions (and never a 0-based one).
    let (mut zero_based, mut one_based) = (0usize, 0usize);
    for e in errors {
        if let (Some(s), Some(no)) = (sku(e), element_no(e)) {
            let at = |i: i64| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| request_keys.get(i))
                    .is_some_and(|k| *k == s)
            };
            zero_based += usize::from(at(no));
            one_based += usize::from(at(no - 1));
        }
    }
    let base: i64 = if one_based > 0 && zero_based == 0 {
        1
    } else {
        0
    };

    let mut reasons: Vec<Option<Vec<String>>> = vec![None; n];
    let mut unattributed: Vec<String> = Vec::new();
    for e in errors {
        let mut texts = reasons_of(e.get("errors"));
        if texts.is_empty() {
            texts = reasons_of(e.get("message"));
        }
        if texts.is_empty() {
            texts.push("element failed without a reason".into());
        }
        let by_position = element_no(e)
            .map(|no| no - base)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|i| *i < n);
        let index = match sku(e) {
            Some(s) => {
                let candidates = &by_key[s.as_str()];
                by_position
                    .filter(|i| candidates.contains(i))
                    .or_else(|| candidates.front().copied())
            }
            None => by_position,
        };
        match index {
            Some(i) => reasons[i].get_or_insert_with(Vec::new).extend(texts),
            None => {
                let name = e
                    .get("merchantSku")
                    .or_else(|| e.get("hepsiburadaSku"))
                    .or_else(|| e.get("elementNo"))
                    .map_or_else(|| "?".to_string(), Value::to_string);
                unattributed.push(format!("{name}: {}", texts.join("; ")));
            }
        }
    }
    if !unattributed.is_empty() {
        tracing::debug!(
            ?unattributed,
            "Hepsiburada upload errors that match no request item"
        );
    }
    let results = request_keys
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let (success, reasons) = match reasons[index].take() {
                Some(r) => (false, r),
                None if failed_upload => (false, vec![format!("upload {status}")]),
                None if !unattributed.is_empty() => (
                    false,
                    vec![format!(
                        "upload {status} with errors that name no request item: {}",
                        clip(&unattributed.join(" | "), 500)
                    )],
                ),
                None => (true, Vec::new()),
            };
            ItemResult {
                index,
                key: key.clone(),
                success,
                reasons,
            }
        })
        .collect();
    Ok(BatchStatus::Done(results))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    fn failed(index: usize, key: &str, reasons: &[&str]) -> ItemResult {
        ItemResult {
            index,
            key: key.into(),
            success: false,
            reasons: reasons.iter().map(|s| s.to_string()).collect(),
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
        assert!(parse_batch_status(Provider::Hepsiburada, r#"{"id":"x"}"#, &k).is_err());
        assert!(parse_batch_status(
            Provider::Hepsiburada,
            r#"{"status":"FAILED","errors":5}"#,
            &k
        )
        .is_err());
    }

    #[test]
    fn hepsiburada_pending() {
        let k = keys(&["S1"]);
        for status in ["PROCESSING", "processing", "QUEUED", "SOMETHING_NEW"] {
            let body = format!(
                r#"{{"id":"u","status":"{status}","createdAt":"2024-01-01T00:00:00.000Z","total":1,"errors":[]}}"#
            );
            assert_eq!(
                parse_batch_status(Provider::Hepsiburada, &body, &k),
                Ok(BatchStatus::Pending)
            );
        }
    }

    #[test]
    fn hepsiburada_completed() {
        let body = r#"{"id":"u","status":"COMPLETED","createdAt":"2024-01-01T00:00:00.000Z","total":2,"errors":[]}"#;
        assert_eq!(
            done(parse_batch_status(
                Provider::Hepsiburada,
                body,
                &keys(&["S1", "S2"])
            )),
            vec![ok(0, "S1"), ok(1, "S2")]
        );
    }

    #[test]
    fn hepsiburada_errors_by_element_and_sku() {
        let k = keys(&["S1", "S2", "S3"]);
        // As the mock sends: 0-based elementNo and the merchantSku.
        let body = r#"{"id":"u","status":"COMPLETED_WITH_ERRORS","total":3,"errors":[
            {"elementNo":1,"hepsiburadaSku":null,"merchantSku":"S2","errors":["Listing not found for this merchant"]}
        ]}"#;
        assert_eq!(
            done(parse_batch_status(Provider::Hepsiburada, body, &k)),
            vec![
                ok(0, "S1"),
                failed(1, "S2", &["Listing not found for this merchant"]),
                ok(2, "S3")
            ]
        );
        // elementNo only: 0-based.
        let body =
            r#"{"status":"COMPLETED_WITH_ERRORS","errors":[{"elementNo":2,"errors":["e"]}]}"#;
        assert_eq!(
            done(parse_batch_status(Provider::Hepsiburada, body, &k)),
            vec![ok(0, "S1"), ok(1, "S2"), failed(2, "S3", &["e"])]
        );
        // 1-based numbering revealed by an entry naming both; applied to the sku-less one.
        let body = r#"{"status":"COMPLETED_WITH_ERRORS","errors":[
            {"elementNo":3,"merchantSku":"S3","errors":["a"]},
            {"elementNo":1,"errors":["b"]}
        ]}"#;
        assert_eq!(
            done(parse_batch_status(Provider::Hepsiburada, body, &k)),
            vec![
                failed(0, "S1", &["b"]),
                ok(1, "S2"),
                failed(2, "S3", &["a"])
            ]
        );
        // The sku wins over a contradicting elementNo; "3" as a string is tolerated.
        let body = r#"{"status":"COMPLETED_WITH_ERRORS","errors":[
            {"elementNo":"0","merchantSku":"S2","errors":[{"message":"locked"}]}
        ]}"#;
        assert_eq!(
            done(parse_batch_status(Provider::Hepsiburada, body, &k)),
            vec![ok(0, "S1"), failed(1, "S2", &["locked"]), ok(2, "S3")]
        );
    }

    #[test]
    fn hepsiburada_failed() {
        let k = keys(&["S1", "S2"]);
        let body = r#"{"id":"u","status":"FAILED","total":2,"errors":[]}"#;
        assert_eq!(
            done(parse_batch_status(Provider::Hepsiburada, body, &k)),
            vec![
                failed(0, "S1", &["upload FAILED"]),
                failed(1, "S2", &["upload FAILED"])
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
    fn hepsiburada_unattributable_error_fails_the_rest() {
        let k = keys(&["S1", "S2"]);
        let body = r#"{"status":"COMPLETED_WITH_ERRORS","errors":[
            {"elementNo":0,"merchantSku":"S1","errors":["x"]},
            {"elementNo":9,"merchantSku":"NOPE","errors":["y"]}
        ]}"#;
        let r = done(parse_batch_status(Provider::Hepsiburada, body, &k));
        assert_eq!(r[0], failed(0, "S1", &["x"]));
        assert!(!r[1].success);
        assert!(r[1].reasons[0].contains("NOPE"), "{:?}", r[1]);
    }
}
