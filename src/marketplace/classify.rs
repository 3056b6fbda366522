//! Push answers -> [`PushOutcome`]; error-message extraction shared with batch polling.
//!
//! Every text quoted from a body is masked whole ([`Mask`], the store's
//! `StoreCredentials::redact`) before it is cut to length: a cut made first could keep the
//! first part of a credential that only the whole text shows.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use super::{Provider, PushOutcome};

/// Masks the credentials out of a whole text (`StoreCredentials::redact` of the store the
/// answer came to).
pub type Mask<'a> = &'a dyn Fn(&str) -> String;

/// Longest message kept in an outcome (characters).
const MAX_MESSAGE_CHARS: usize = 1000;

/// Classifies a push answer. Pure except that an HTTP-date `Retry-After` is measured
/// against the current time.
///
/// Order: a 2xx with an id is accepted; then the identical-body message (any status);
/// then 429, 401, 403, 400, 413, 5xx, and any other status as unexpected; a 2xx without
/// valid JSON or without an id is a transport failure (the push may or may not have been
/// queued).
pub fn classify(
    provider: Provider,
    status: u16,
    headers: &HeaderMap,
    body: &str,
    mask: Mask<'_>,
) -> PushOutcome {
    classify_at(provider, status, headers, body, SystemTime::now(), mask)
}

pub(crate) fn classify_at(
    provider: Provider,
    status: u16,
    headers: &HeaderMap,
    body: &str,
    now: SystemTime,
    mask: Mask<'_>,
) -> PushOutcome {
    let json: Option<Value> = serde_json::from_str(body).ok();
    let success = (200..300).contains(&status);
    if success {
        if let Some(batch_ref) = json.as_ref().and_then(|v| batch_ref(provider, v)) {
            return PushOutcome::Accepted { batch_ref };
        }
    }
    if is_identical_refusal(json.as_ref(), body) {
        return PushOutcome::IdenticalBody {
            status,
            message: error_message(status, body, mask),
        };
    }
    if success {
        let message = match &json {
            None => format!(
                "HTTP {status} with a body that is not JSON: {}",
                clip(&mask(body.trim()), 200)
            ),
            Some(_) => format!(
                "HTTP {status} without {}: {}",
                match provider {
                    Provider::Trendyol => "batchRequestId",
                    Provider::Hepsiburada => "id",
                },
                clip(&mask(body.trim()), 200)
            ),
        };
        return PushOutcome::Transport { message };
    }
    match status {
        429 => PushOutcome::RateLimited {
            retry_after: retry_after(headers, now),
        },
        401 => PushOutcome::AuthRejected {
            status,
            message: error_message(status, body, mask),
        },
        403 => PushOutcome::Forbidden {
            message: error_message(status, body, mask),
        },
        400 => PushOutcome::BadRequest {
            status,
            message: error_message(status, body, mask),
        },
        413 => PushOutcome::TooLarge {
            message: error_message(status, body, mask),
        },
        500..=599 => PushOutcome::ServerError {
            status,
            message: error_message(status, body, mask),
        },
        _ => PushOutcome::Unexpected {
            status,
            message: error_message(status, body, mask),
        },
    }
}

/// Trendyol `batchRequestId`, Hepsiburada `id` (each also accepts the other's name;
/// a number is taken as its decimal text). Blank ids do not count.
fn batch_ref(provider: Provider, v: &Value) -> Option<String> {
    let names = match provider {
        Provider::Trendyol => ["batchRequestId", "id"],
        Provider::Hepsiburada => ["id", "batchRequestId"],
    };
    names.iter().find_map(|n| match v.get(n)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// Folds Turkish letters to ASCII and lower-cases, so the refusal is recognised
/// whatever casing or transliteration the service uses.
fn fold_turkish(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'ı' | 'İ' | 'I' => 'i',
            'ğ' | 'Ğ' => 'g',
            'ş' | 'Ş' => 's',
            'ç' | 'Ç' => 'c',
            'ö' | 'Ö' => 'o',
            'ü' | 'Ü' => 'u',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn is_identical_text(s: &str) -> bool {
    let f = fold_turkish(s);
    f.contains("ayni istegi tekrarli") || f.contains("15 dakika boyunca ayni")
}

/// The "15 dakika boyunca aynı isteği tekrarlı olarak atamazsınız!" refusal, in the
/// raw body or in any string of the JSON body (which may escape the letters).
fn is_identical_refusal(json: Option<&Value>, body: &str) -> bool {
    fn any_string(v: &Value, depth: usize) -> bool {
        if depth > 8 {
            return false;
        }
        match v {
            Value::String(s) => is_identical_text(s),
            Value::Array(a) => a.iter().any(|v| any_string(v, depth + 1)),
            Value::Object(o) => o.values().any(|v| any_string(v, depth + 1)),
            _ => false,
        }
    }
    is_identical_text(body) || json.is_some_and(|v| any_string(v, 0))
}

/// The human message of an error body. Documented shapes, in this order:
/// `{"errors":[{"message",..}]}` (Trendyol, Hepsiburada; several are joined with
/// "; "), `{"errors":["text"]}`, `{"errors":{"field":["text"]}}`, `{"message"}`,
/// `{"title"}` (with `detail`), `{"error"}` / `{"error_description"}`, `{"text"}`;
/// any other body is used as plain text; an empty one gives `HTTP <status>`.
pub(crate) fn error_message(status: u16, body: &str, mask: Mask<'_>) -> String {
    let trimmed = body.trim();
    let from_json = serde_json::from_str::<Value>(trimmed)
        .ok()
        .and_then(|v| message_from_json(&v));
    let message = match from_json {
        Some(m) => m,
        None if trimmed.is_empty() => format!("HTTP {status}"),
        None => trimmed.to_string(),
    };
    clip(&mask(&message), MAX_MESSAGE_CHARS)
}

fn message_from_json(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => return Some(s.trim().to_string()),
        Value::Array(a) => return messages_of_list(a),
        Value::Object(_) => {}
        _ => return None,
    }
    let text = |name: &str| {
        v.get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    if let Some(m) = match v.get("errors") {
        Some(Value::Array(a)) => messages_of_list(a),
        Some(Value::Object(o)) => {
            let parts: Vec<String> = o
                .iter()
                .filter_map(|(field, msgs)| {
                    let m = match msgs {
                        Value::Array(a) => messages_of_list(a)?,
                        other => message_from_json(other)?,
                    };
                    Some(format!("{field}: {m}"))
                })
                .collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        _ => None,
    } {
        // ASP.NET-style problem details put the summary in `title` beside `errors`.
        return Some(match text("title") {
            Some(t) if v.get("errors").is_some_and(Value::is_object) => format!("{t}: {m}"),
            _ => m,
        });
    }
    if let Some(m) = text("message") {
        return Some(m.to_string());
    }
    if let Some(t) = text("title") {
        return Some(match text("detail") {
            Some(d) => format!("{t}: {d}"),
            None => t.to_string(),
        });
    }
    for name in [
        "error_description",
        "errorMessage",
        "error",
        "text",
        "detail",
    ] {
        if let Some(m) = text(name) {
            return Some(m.to_string());
        }
    }
    if let Some(e) = v.get("error").filter(|e| e.is_object()) {
        return message_from_json(e);
    }
    None
}

/// Messages of a list of error entries (objects with `message`, or strings).
fn messages_of_list(a: &[Value]) -> Option<String> {
    let parts: Vec<String> = a
        .iter()
        .filter_map(|e| match e {
            Value::String(s) => Some(s.trim().to_string()),
            Value::Object(o) => ["message", "title", "error", "text", "key"]
                .iter()
                .find_map(|n| o.get(*n).and_then(Value::as_str))
                .map(|s| s.trim().to_string()),
            _ => None,
        })
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// `s` cut to at most `max` characters (an ellipsis marks the cut).
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `Retry-After` (delta seconds or HTTP-date), else `X-RateLimit-Reset` (delta seconds,
/// or epoch seconds/milliseconds when the number is that large).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .find(|v| !v.is_empty())
    };
    if let Some(v) = header(RETRY_AFTER.as_str()) {
        if let Some(d) = delta_seconds(v) {
            return Some(d);
        }
        if let Some(at) = http_date(v) {
            return Some(until(at, now));
        }
    }
    if let Some(v) = header("x-ratelimit-reset") {
        if let Ok(n) = v.parse::<f64>() {
            // 1e9 s is 2001 as an epoch, 31 years as a delta: no real delta is that large.
            return if n >= 1e12 {
                epoch(n / 1000.0).map(|at| until(at, now))
            } else if n >= 1e9 {
                epoch(n).map(|at| until(at, now))
            } else {
                seconds(n)
            };
        }
        if let Some(at) = http_date(v) {
            return Some(until(at, now));
        }
    }
    None
}

/// A non-negative, finite number of seconds as a duration (`None` otherwise; never panics).
fn seconds(n: f64) -> Option<Duration> {
    if n.is_finite() && n >= 0.0 {
        Duration::try_from_secs_f64(n).ok()
    } else {
        None
    }
}

fn delta_seconds(v: &str) -> Option<Duration> {
    v.parse().ok().and_then(seconds)
}

/// An epoch timestamp in seconds, if representable.
fn epoch(n: f64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(seconds(n)?)
}

fn until(at: SystemTime, now: SystemTime) -> Duration {
    at.duration_since(now).unwrap_or(Duration::ZERO)
}

/// IMF-fixdate / RFC 2822, RFC 850 and asctime forms.
fn http_date(v: &str) -> Option<SystemTime> {
    let utc: DateTime<Utc> = if let Ok(d) = DateTime::parse_from_rfc2822(v) {
        d.with_timezone(&Utc)
    } else {
        ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(v, f).ok())?
            .and_utc()
    };
    Some(utc.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> String {
        s.to_string()
    }

    fn classify(p: Provider, status: u16, headers: &HeaderMap, body: &str) -> PushOutcome {
        super::classify(p, status, headers, body, &plain)
    }

    fn classify_at(
        p: Provider,
        status: u16,
        headers: &HeaderMap,
        body: &str,
        now: SystemTime,
    ) -> PushOutcome {
        super::classify_at(p, status, headers, body, now, &plain)
    }
    use reqwest::header::HeaderValue;

    const IDENTICAL: &str = "15 dakika boyunca aynı isteği tekrarlı olarak atamazsınız!";

    fn none() -> HeaderMap {
        HeaderMap::new()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn c(p: Provider, status: u16, body: &str) -> PushOutcome {
        classify(p, status, &none(), body)
    }

    #[test]
    fn accepted() {
        assert_eq!(
            c(
                Provider::Trendyol,
                200,
                r#"{"batchRequestId":"fa1e3a8c-2d1f-4f5e-9d55-1d3e2b0a7c11-1700000000"}"#
            ),
            PushOutcome::Accepted {
                batch_ref: "fa1e3a8c-2d1f-4f5e-9d55-1d3e2b0a7c11-1700000000".into()
            }
        );
        assert_eq!(
            c(Provider::Hepsiburada, 200, r#"{"id":"3f1e"}"#),
            PushOutcome::Accepted {
                batch_ref: "3f1e".into()
            }
        );
        assert_eq!(
            c(Provider::Hepsiburada, 202, r#"{"id":42}"#),
            PushOutcome::Accepted {
                batch_ref: "42".into()
            }
        );
    }

    #[test]
    fn broken_success_is_transport() {
        for (p, body) in [
            (Provider::Trendyol, "<html>ok</html>"),
            (Provider::Trendyol, ""),
            (Provider::Trendyol, r#"{"batchRequestId":""}"#),
            (Provider::Trendyol, r#"{"batchRequestId":null}"#),
            (Provider::Hepsiburada, r#"{"status":"ok"}"#),
            (Provider::Hepsiburada, "[]"),
        ] {
            assert!(
                matches!(c(p, 200, body), PushOutcome::Transport { .. }),
                "{body}"
            );
        }
    }

    #[test]
    fn identical_body_any_status() {
        let ty_body = format!(
            r#"{{"timestamp":1,"exception":"ClientApiBusinessException","errors":[{{"key":"identical.request","message":"{IDENTICAL}","errorCode":"identical.request"}}]}}"#
        );
        for status in [400, 409, 429, 200] {
            assert_eq!(
                c(Provider::Trendyol, status, &ty_body),
                PushOutcome::IdenticalBody {
                    status,
                    message: IDENTICAL.into()
                }
            );
        }
        // Escaped letters in JSON, plain text, ASCII transliteration.
        let escaped = r#"{"message":"15 dakika boyunca ayn\u0131 iste\u011fi tekrarl\u0131 olarak atamazs\u0131n\u0131z!"}"#;
        assert!(matches!(
            c(Provider::Trendyol, 400, escaped),
            PushOutcome::IdenticalBody { status: 400, .. }
        ));
        assert!(matches!(
            c(Provider::Trendyol, 400, IDENTICAL),
            PushOutcome::IdenticalBody { status: 400, .. }
        ));
        assert!(matches!(
            c(
                Provider::Trendyol,
                400,
                "15 DAKIKA BOYUNCA AYNI ISTEGI TEKRARLI olarak atamazsiniz"
            ),
            PushOutcome::IdenticalBody { .. }
        ));
    }

    #[test]
    fn rate_limited() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |h: HeaderMap| match classify_at(Provider::Trendyol, 429, &h, "", now) {
            PushOutcome::RateLimited { retry_after } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(none()), None);
        assert_eq!(
            at(headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(at(headers(&[("retry-after", "0")])), Some(Duration::ZERO));
        // 1_700_000_000 = Tue, 14 Nov 2023 22:13:20 GMT
        assert_eq!(
            at(headers(&[("retry-after", "Tue, 14 Nov 2023 22:13:50 GMT")])),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            at(headers(&[(
                "retry-after",
                "Tuesday, 14-Nov-23 22:13:25 GMT"
            )])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            at(headers(&[("retry-after", "Tue Nov 14 22:13:30 2023")])),
            Some(Duration::from_secs(10))
        );
        // A date in the past: retry now.
        assert_eq!(
            at(headers(&[("retry-after", "Tue, 14 Nov 2023 22:00:00 GMT")])),
            Some(Duration::ZERO)
        );
        // X-RateLimit-Reset as delta, epoch seconds, epoch millis.
        assert_eq!(
            at(headers(&[("x-ratelimit-reset", "12")])),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            at(headers(&[("x-ratelimit-reset", "1700000003")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            at(headers(&[("x-ratelimit-reset", "1700000004000")])),
            Some(Duration::from_secs(4))
        );
        // Retry-After wins; garbage falls through.
        assert_eq!(
            at(headers(&[("retry-after", "2"), ("x-ratelimit-reset", "9")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            at(headers(&[
                ("retry-after", "soon"),
                ("x-ratelimit-reset", "9")
            ])),
            Some(Duration::from_secs(9))
        );
        assert_eq!(at(headers(&[("retry-after", "-3")])), None);
    }

    #[test]
    fn auth_server_and_bad_request() {
        let ty401 = r#"{"timestamp":1,"exception":"ClientApiAuthenticationException","errors":[{"key":"ClientApiAuthenticationException","message":"Unauthorized: wrong credentials","errorCode":"unauthorized"}]}"#;
        assert_eq!(
            c(Provider::Trendyol, 401, ty401),
            PushOutcome::AuthRejected {
                status: 401,
                message: "Unauthorized: wrong credentials".into()
            }
        );
        assert!(matches!(
            c(Provider::Trendyol, 403, ""),
            PushOutcome::Forbidden { ref message } if message == "HTTP 403"
        ));
        assert_eq!(
            c(
                Provider::Trendyol,
                400,
                r#"{"errors":[{"key":"items[0].quantity","message":"quantity must be between 0 and 20000, got -1","errorCode":"quantity.out.of.range"},{"key":"items[1].barcode","message":"duplicate barcode","errorCode":"barcode.duplicate"}]}"#
            ),
            PushOutcome::BadRequest {
                status: 400,
                message: "quantity must be between 0 and 20000, got -1; duplicate barcode".into()
            }
        );
        assert!(matches!(
            c(Provider::Trendyol, 500, r#"{"errors":[{"key":"generic.exception","message":"Exception occurred","errorCode":"generic.exception"}]}"#),
            PushOutcome::ServerError { status: 500, ref message } if message == "Exception occurred"
        ));
        assert!(matches!(
            c(Provider::Trendyol, 503, "<html><body>Service Unavailable</body></html>"),
            PushOutcome::ServerError { status: 503, ref message } if message.contains("Service Unavailable")
        ));
        assert!(matches!(
            c(Provider::Hepsiburada, 404, ""),
            PushOutcome::Unexpected { status: 404, .. }
        ));
        assert!(matches!(
            c(Provider::Hepsiburada, 413, "too big"),
            PushOutcome::TooLarge { .. }
        ));
    }

    #[test]
    fn hepsiburada_error_shapes() {
        let msg = |status, body| match c(Provider::Hepsiburada, status, body) {
            PushOutcome::BadRequest { message, .. }
            | PushOutcome::AuthRejected { message, .. }
            | PushOutcome::ServerError { message, .. }
            | PushOutcome::Unexpected { message, .. } => message,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            msg(
                400,
                r#"{"errors":[{"message":"Element 0: availableStock must be an integer","code":"InvalidAvailableStock"}]}"#
            ),
            "Element 0: availableStock must be an integer"
        );
        assert_eq!(
            msg(400, r#"{"message":"Invalid request"}"#),
            "Invalid request"
        );
        assert_eq!(msg(401, r#"{"title":"Unauthorized"}"#), "Unauthorized");
        assert_eq!(
            msg(400, r#"{"title":"Bad Request","detail":"sku missing"}"#),
            "Bad Request: sku missing"
        );
        assert_eq!(
            msg(
                400,
                r#"{"title":"One or more validation errors occurred.","status":400,"errors":{"[0].availableStock":["must be >= 0"]}}"#
            ),
            "One or more validation errors occurred.: [0].availableStock: must be >= 0"
        );
        assert_eq!(msg(400, "  Bad request: body\n"), "Bad request: body");
        assert_eq!(msg(502, ""), "HTTP 502");
        assert_eq!(msg(400, r#"{"errors":["a","b"]}"#), "a; b");
        assert_eq!(msg(400, r#""quoted text""#), "quoted text");
        // Unknown JSON shape: the body itself.
        assert_eq!(msg(400, r#"{"foo":1}"#), r#"{"foo":1}"#);
        // Long bodies are clipped.
        let long = "x".repeat(5000);
        assert_eq!(msg(400, &long).chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn other_statuses_are_the_stores_problem_not_the_items() {
        for status in [302, 404, 405, 408, 409, 415, 422, 451, 100] {
            assert!(
                matches!(
                    c(Provider::Trendyol, status, r#"{"errors":[{"message":"m"}]}"#),
                    PushOutcome::Unexpected { status: s, .. } if s == status
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_never_panics_whatever_the_value() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let at = |h: HeaderMap| retry_after(&h, now);
        for v in [
            "-5",
            "1e25",
            "1e300",
            "NaN",
            "inf",
            "-inf",
            "1e-300",
            "99999999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "",
            "   ",
            "1.5.3",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            let _ = at(headers(&[("retry-after", v)]));
            let _ = at(headers(&[("x-ratelimit-reset", v)]));
        }
        assert_eq!(at(headers(&[("retry-after", "1e25")])), None);
        assert_eq!(at(headers(&[("x-ratelimit-reset", "1e300")])), None);
        assert_eq!(at(headers(&[("retry-after", "NaN")])), None);
        assert_eq!(
            at(headers(&[("retry-after", "1.5")])),
            Some(Duration::from_millis(1500))
        );
    }
}
