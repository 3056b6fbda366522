//! Reading back what a marketplace shows (reconciliation): the URL of one page of listings or
//! of a few listings by key, and the answer parsed into [`Listing`]s. Pure (text in, listings
//! out) and unit-tested; the HTTP call is [`super::MarketplaceClient::read_listings`].
//!
//! The contracts are in `/work/shared/docs/marketplace-contracts.md` ("Reading back what the
//! marketplace shows"):
//!
//! | | Trendyol | Hepsiburada |
//! | --- | --- | --- |
//! | path | `/integration/product/sellers/{sellerId}/products/approved/inventory-and-price` | `/listings/merchantid/{merchantId}` |
//! | a page | `page` + `size` (at most 100 *contents*), then `nextPageToken` | `offset` + `limit` |
//! | by key | `barcodes=a,b` (at most 50), `barcode=` one | `merchantSkuList=a,b` (at most 50) |
//! | the stock | `content[].variants[].quantity` | `listings[].availableStock` |
//!
//! # Rules kept here
//! * A missing or `null` quantity is *unknown* ([`Listing::quantity`] `None`), never 0.
//! * Trendyol pages count contents (product groups); each content holds one listing per
//!   variant. A page is followed by the answer's `nextPageToken` whenever it has one; only an
//!   answer without a token is followed by page number (while `totalPages` says there is
//!   more), so no scan relies on the page-number window (`page × size` at most 10,000).
//! * Hepsiburada's order is undocumented: pages may repeat or shift listings, so callers
//!   deduplicate by [`Listing::listing_id`]. `listings` may be `null` (an empty page). The
//!   next `offset` is this one plus the rows the page returned (at most `limit`): a server
//!   that returns fewer rows than asked for, while `totalCount` says there are more, would
//!   otherwise have rows skipped.
//! * Trendyol's `stockLastModifiedDate` (epoch milliseconds) is kept as
//!   [`Listing::stock_modified_at`]: it tells whether the marketplace changed the stock
//!   after stocksync's last accepted push.
//! * Keys are compared in the marketplace's spelling ([`match_key`]): Trendyol removes spaces
//!   inside barcodes, Hepsiburada may upper-case merchant skus.
//! * A malformed answer is an error naming the field ([`MalformedPage`]); a malformed row (a
//!   variant without barcode, a listing without merchantSku, a quantity that is not an
//!   integer) is a [`BadRow`] naming the row and field, and the rest of the page is used.
//!   Neither ever quotes a value from the answer (it could echo anything).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Provider, PushOutcome};

/// Contents per Trendyol page: the documented maximum.
pub const TRENDYOL_PAGE_SIZE: u32 = 100;
/// Keys per read by key (Trendyol `barcodes`, Hepsiburada `merchantSkuList`).
pub const MAX_KEYS_PER_READ: usize = 50;
/// Longest lock or freeze reason kept (characters); marketplace text is shown, not trusted.
/// [`parse_listings`] keeps reasons whole: the client cuts them after masking credentials.
pub(super) const MAX_REASON_CHARS: usize = 200;

/// Where a scan goes next. Stored (JSON) by a resumable audit, so it must stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cursor {
    /// Trendyol by page number (0-based): the first page, and pages after an answer without
    /// a token.
    TrendyolPage { page: u32 },
    /// Trendyol: the `nextPageToken` of the previous answer (sent without `page`).
    TrendyolToken { token: String },
    /// Hepsiburada: the offset of the next page.
    HepsiburadaOffset { offset: u64 },
}

impl Cursor {
    /// The first page of a scan.
    pub fn first(provider: Provider) -> Cursor {
        match provider {
            Provider::Trendyol => Cursor::TrendyolPage { page: 0 },
            Provider::Hepsiburada => Cursor::HepsiburadaOffset { offset: 0 },
        }
    }
}

/// One read.
#[derive(Debug, Clone, Copy)]
pub enum ReadQuery<'a> {
    /// A page of the whole catalogue: Trendyol `size` contents, Hepsiburada `limit` listings.
    Page { cursor: &'a Cursor, size: u32 },
    /// The listings with these keys (at most [`MAX_KEYS_PER_READ`]; see [`key_groups`]).
    Keys(&'a [String]),
}

/// One listing as the marketplace shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Trendyol barcode, Hepsiburada merchantSku, as the marketplace wrote it.
    pub key: String,
    /// The stock shown; `None` when missing or `null` (unknown, not 0).
    pub quantity: Option<i64>,
    /// Hepsiburada `listingId` (pages may repeat a listing); `None` for Trendyol.
    pub listing_id: Option<String>,
    /// When the marketplace last changed this listing's stock (Trendyol
    /// `stockLastModifiedDate`, epoch milliseconds); `None` when not given (Hepsiburada).
    pub stock_modified_at: Option<DateTime<Utc>>,
    pub flags: ListingFlags,
}

/// Hepsiburada's listing flags that decide whether a listing may be repaired (all false for
/// Trendyol).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListingFlags {
    /// Warehouse stock managed by Hepsiburada: never pushed.
    pub fulfilled_by_hb: bool,
    /// A campaign: decreases are refused per item until it ends.
    pub stock_decrease_disabled: bool,
    /// `isLocked` with its `lockReasons`.
    pub locked: Option<Vec<String>>,
    /// `isFrozen` with its `freezeReasons`.
    pub frozen: Option<Vec<String>>,
    /// `isSuspended` (reported; a suspended listing still takes stock).
    pub suspended: bool,
}

/// A row of an answer that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// Which row and field, e.g. `content[3].variants[1].barcode`.
    pub field: String,
    pub problem: &'static str,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// An answer that is not a listings page at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed listings answer: {field}: {problem}")]
pub struct MalformedPage {
    pub field: &'static str,
    pub problem: &'static str,
}

/// A page of listings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListingPage {
    pub listings: Vec<Listing>,
    pub bad_rows: Vec<BadRow>,
    /// The next page of the scan; `None` after the last page (and for reads by key).
    pub next: Option<Cursor>,
    /// Trendyol `totalPages`, Hepsiburada pages from `totalCount` / `limit`, when given: for
    /// progress only.
    pub total_pages: Option<u64>,
}

/// Why a read gave no page.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadFailure {
    /// A non-2xx answer, classified as a push answer would be (429 with its wait, 401/403,
    /// other 4xx, 5xx).
    Refused(PushOutcome),
    /// No usable answer (timeout, connection, a body that could not be read).
    Transport(String),
    /// A 2xx whose body is not a listings page.
    Malformed(MalformedPage),
}

/// A key in the spelling the marketplace compares: Trendyol barcodes without whitespace
/// (Trendyol removes spaces inside barcodes), Hepsiburada merchant skus case-insensitively
/// ([`super::fold_sku`]: they may come back upper-cased, Turkish letters included).
pub fn match_key(provider: Provider, key: &str) -> String {
    match provider {
        Provider::Trendyol => key.chars().filter(|c| !c.is_whitespace()).collect(),
        Provider::Hepsiburada => super::fold_sku(key),
    }
}

/// Keys split into reads: groups of at most [`MAX_KEYS_PER_READ`] for the list filter, and a
/// key containing `,` alone (the list filter splits on it; Trendyol's one-key `barcode=`
/// takes it whole). Hepsiburada has no one-key filter: such keys are returned apart, as
/// keys that cannot be read by key.
pub fn key_groups(provider: Provider, keys: &[String]) -> (Vec<Vec<String>>, Vec<String>) {
    let (plain, comma): (Vec<&String>, Vec<&String>) = keys.iter().partition(|k| !k.contains(','));
    let mut groups: Vec<Vec<String>> = plain
        .chunks(MAX_KEYS_PER_READ)
        .map(|c| c.iter().map(|k| k.to_string()).collect())
        .collect();
    let mut unreadable = Vec::new();
    for key in comma {
        match provider {
            Provider::Trendyol => groups.push(vec![key.clone()]),
            Provider::Hepsiburada => unreadable.push(key.clone()),
        }
    }
    (groups, unreadable)
}

/// Path and query of a read, after the base URL; `seller` is already a path segment.
pub(super) fn path(provider: Provider, seller: &str, query: &ReadQuery<'_>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    let base = match provider {
        Provider::Trendyol => {
            match query {
                ReadQuery::Page {
                    cursor: Cursor::TrendyolToken { token },
                    size,
                } => {
                    q.append_pair("size", &size.to_string());
                    q.append_pair("nextPageToken", token);
                }
                ReadQuery::Page { cursor, size } => {
                    let page = match cursor {
                        Cursor::TrendyolPage { page } => *page,
                        _ => 0,
                    };
                    q.append_pair("page", &page.to_string());
                    q.append_pair("size", &size.to_string());
                }
                ReadQuery::Keys([one]) if one.contains(',') => {
                    q.append_pair("barcode", one);
                    q.append_pair("page", "0");
                    q.append_pair("size", &TRENDYOL_PAGE_SIZE.to_string());
                }
                ReadQuery::Keys(keys) => {
                    q.append_pair("barcodes", &keys.join(","));
                    q.append_pair("page", "0");
                    q.append_pair("size", &TRENDYOL_PAGE_SIZE.to_string());
                }
            }
            q.append_pair("orderByDirection", "ASC");
            format!("/integration/product/sellers/{seller}/products/approved/inventory-and-price")
        }
        Provider::Hepsiburada => {
            match query {
                ReadQuery::Page { cursor, size } => {
                    let offset = match cursor {
                        Cursor::HepsiburadaOffset { offset } => *offset,
                        _ => 0,
                    };
                    q.append_pair("offset", &offset.to_string());
                    q.append_pair("limit", &size.to_string());
                }
                ReadQuery::Keys(keys) => {
                    q.append_pair("merchantSkuList", &keys.join(","));
                    q.append_pair("offset", "0");
                    q.append_pair("limit", &MAX_KEYS_PER_READ.to_string());
                }
            }
            format!("/listings/merchantid/{seller}")
        }
    };
    format!("{base}?{}", q.finish())
}

/// Parses a 2xx answer of `query`.
pub fn parse_listings(
    provider: Provider,
    query: &ReadQuery<'_>,
    body: &str,
) -> Result<ListingPage, MalformedPage> {
    let value: Value = serde_json::from_str(body).map_err(|_| MalformedPage {
        field: "(body)",
        problem: "not JSON",
    })?;
    let Value::Object(root) = value else {
        return Err(MalformedPage {
            field: "(body)",
            problem: "not a JSON object",
        });
    };
    match provider {
        Provider::Trendyol => parse_trendyol(query, &root),
        Provider::Hepsiburada => parse_hepsiburada(query, &root),
    }
}

/// The array at `field`: missing or `null` is empty, anything else but an array is malformed.
fn array<'a>(
    root: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a [Value], MalformedPage> {
    match root.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(MalformedPage {
            field,
            problem: "not an array",
        }),
    }
}

/// A non-negative integer at `field`, if there is one.
fn count(root: &Map<String, Value>, field: &str) -> Option<u64> {
    root.get(field).and_then(Value::as_u64)
}

/// A quantity: an integer, or unknown (missing, `null`); anything else is a bad row.
fn quantity(row: &Map<String, Value>, field: &str) -> Result<Option<i64>, &'static str> {
    match row.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or("not an integer"),
        Some(_) => Err("not an integer"),
    }
}

/// A time at `field`: epoch milliseconds (as Trendyol writes its dates) or RFC 3339 text;
/// anything else, or nothing, is unknown (a listing is never rejected for its date: the date
/// only lets a difference be repaired sooner).
fn modified_at(row: &Map<String, Value>, field: &str) -> Option<DateTime<Utc>> {
    match row.get(field)? {
        Value::Number(n) => DateTime::from_timestamp_millis(n.as_i64()?),
        Value::String(s) => DateTime::parse_from_rfc3339(s.trim())
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        _ => None,
    }
}

/// A non-blank string at `field`.
fn text(row: &Map<String, Value>, field: &str) -> Result<String, &'static str> {
    match row.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err("blank"),
        None | Some(Value::Null) => Err("missing"),
        Some(_) => Err("not a string"),
    }
}

fn parse_trendyol(
    query: &ReadQuery<'_>,
    root: &Map<String, Value>,
) -> Result<ListingPage, MalformedPage> {
    let contents = array(root, "content")?;
    let mut page = ListingPage {
        total_pages: count(root, "totalPages"),
        ..ListingPage::default()
    };
    for (i, content) in contents.iter().enumerate() {
        let Value::Object(content) = content else {
            page.bad_rows.push(BadRow {
                field: format!("content[{i}]"),
                problem: "not an object",
            });
            continue;
        };
        let variants = match content.get("variants") {
            Some(Value::Array(v)) => v.as_slice(),
            None | Some(Value::Null) => &[],
            Some(_) => {
                page.bad_rows.push(BadRow {
                    field: format!("content[{i}].variants"),
                    problem: "not an array",
                });
                continue;
            }
        };
        for (j, variant) in variants.iter().enumerate() {
            let row = |field: &str, problem| BadRow {
                field: format!("content[{i}].variants[{j}]{field}"),
                problem,
            };
            let Value::Object(variant) = variant else {
                page.bad_rows.push(row("", "not an object"));
                continue;
            };
            let key = match text(variant, "barcode") {
                Ok(k) => k,
                Err(problem) => {
                    page.bad_rows.push(row(".barcode", problem));
                    continue;
                }
            };
            match quantity(variant, "quantity") {
                Ok(quantity) => page.listings.push(Listing {
                    key,
                    quantity,
                    listing_id: None,
                    stock_modified_at: modified_at(variant, "stockLastModifiedDate"),
                    flags: ListingFlags::default(),
                }),
                Err(problem) => page.bad_rows.push(row(".quantity", problem)),
            }
        }
    }
    page.next = match query {
        ReadQuery::Keys(_) => None,
        _ if contents.is_empty() => None,
        ReadQuery::Page { cursor, .. } => {
            let token = root
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty());
            match (token, cursor) {
                (Some(token), _) => Some(Cursor::TrendyolToken {
                    token: token.to_string(),
                }),
                // No token: by page number while the marketplace says there is more (an
                // answer without a page count ends the scan).
                (None, Cursor::TrendyolPage { page: number }) => {
                    let this = count(root, "page").unwrap_or(u64::from(*number));
                    (this + 1 < page.total_pages.unwrap_or(0))
                        .then_some(Cursor::TrendyolPage { page: number + 1 })
                }
                (None, _) => None,
            }
        }
    };
    Ok(page)
}

fn parse_hepsiburada(
    query: &ReadQuery<'_>,
    root: &Map<String, Value>,
) -> Result<ListingPage, MalformedPage> {
    let rows = array(root, "listings")?;
    let mut page = ListingPage::default();
    for (i, listing) in rows.iter().enumerate() {
        let bad = |field: &str, problem| BadRow {
            field: format!("listings[{i}]{field}"),
            problem,
        };
        let Value::Object(listing) = listing else {
            page.bad_rows.push(bad("", "not an object"));
            continue;
        };
        let key = match text(listing, "merchantSku") {
            Ok(k) => k,
            Err(problem) => {
                page.bad_rows.push(bad(".merchantSku", problem));
                continue;
            }
        };
        let quantity = match quantity(listing, "availableStock") {
            Ok(q) => q,
            Err(problem) => {
                page.bad_rows.push(bad(".availableStock", problem));
                continue;
            }
        };
        let flag = |name: &str| listing.get(name).and_then(Value::as_bool).unwrap_or(false);
        let reasons = |flag_name: &str, list: &str| {
            flag(flag_name).then(|| {
                listing
                    .get(list)
                    .and_then(Value::as_array)
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default()
            })
        };
        page.listings.push(Listing {
            key,
            quantity,
            listing_id: listing
                .get("listingId")
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .filter(|s| !s.is_empty()),
            stock_modified_at: None,
            flags: ListingFlags {
                fulfilled_by_hb: flag("isFulfilledByHB"),
                stock_decrease_disabled: flag("stockDecreaseDisabled"),
                locked: reasons("isLocked", "lockReasons"),
                frozen: reasons("isFrozen", "freezeReasons"),
                suspended: flag("isSuspended"),
            },
        });
    }
    let total = count(root, "totalCount");
    if let ReadQuery::Page {
        cursor: Cursor::HepsiburadaOffset { offset },
        size,
    } = query
    {
        let size = u64::from((*size).max(1));
        page.total_pages = total.map(|t| t.div_ceil(size));
        // On by the rows this page returned (a server may return fewer than `limit` while
        // more exist), never by more than `limit`: rows beyond it repeat earlier ones.
        let next = offset + (rows.len() as u64).min(size);
        let more = match total {
            Some(total) => next < total,
            // Without a count, read on until an empty page.
            None => true,
        };
        if !rows.is_empty() && more {
            page.next = Some(Cursor::HepsiburadaOffset { offset: next });
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn paths_and_queries() {
        let first = Cursor::first(Provider::Trendyol);
        assert_eq!(
            path(
                Provider::Trendyol,
                "42",
                &ReadQuery::Page {
                    cursor: &first,
                    size: 100
                }
            ),
            "/integration/product/sellers/42/products/approved/inventory-and-price?page=0&size=100&orderByDirection=ASC"
        );
        let token = Cursor::TrendyolToken {
            token: "a b&c=".into(),
        };
        assert_eq!(
            path(
                Provider::Trendyol,
                "42",
                &ReadQuery::Page {
                    cursor: &token,
                    size: 100
                }
            ),
            "/integration/product/sellers/42/products/approved/inventory-and-price?size=100&nextPageToken=a+b%26c%3D&orderByDirection=ASC"
        );
        let two = keys(&["869 1", "x/y"]);
        assert!(path(Provider::Trendyol, "42", &ReadQuery::Keys(&two))
            .contains("?barcodes=869+1%2Cx%2Fy&page=0&size=100"));
        let comma = keys(&["a,b"]);
        assert!(
            path(Provider::Trendyol, "42", &ReadQuery::Keys(&comma)).contains("?barcode=a%2Cb&")
        );
        let hb = Cursor::HepsiburadaOffset { offset: 300 };
        assert_eq!(
            path(
                Provider::Hepsiburada,
                "m-1",
                &ReadQuery::Page {
                    cursor: &hb,
                    size: 100
                }
            ),
            "/listings/merchantid/m-1?offset=300&limit=100"
        );
        assert_eq!(
            path(
                Provider::Hepsiburada,
                "m-1",
                &ReadQuery::Keys(&keys(&["S1", "s2"]))
            ),
            "/listings/merchantid/m-1?merchantSkuList=S1%2Cs2&offset=0&limit=50"
        );
    }

    #[test]
    fn keys_match_as_the_marketplace_spells_them() {
        assert_eq!(match_key(Provider::Trendyol, "869 0001\t2"), "86900012");
        assert_eq!(
            match_key(Provider::Trendyol, "Ab"),
            "Ab",
            "barcodes keep their case"
        );
        for (a, b) in [
            ("sku-ab", "SKU-AB"),
            ("kılıf-1", "KILIF-1"),
            ("iğne", "İĞNE"),
            (" x ", "X"),
        ] {
            assert_eq!(
                match_key(Provider::Hepsiburada, a),
                match_key(Provider::Hepsiburada, b),
                "{a} / {b}"
            );
        }
        assert_ne!(
            match_key(Provider::Hepsiburada, "a-1"),
            match_key(Provider::Hepsiburada, "a_1")
        );
    }

    #[test]
    fn key_groups_split_by_fifty_and_commas() {
        let many: Vec<String> = (0..120).map(|i| format!("K{i}")).collect();
        let mut with_comma = many.clone();
        with_comma.push("a,b".into());
        let (groups, unreadable) = key_groups(Provider::Trendyol, &with_comma);
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            [50, 50, 20, 1]
        );
        assert!(unreadable.is_empty());
        let (groups, unreadable) = key_groups(Provider::Hepsiburada, &with_comma);
        assert_eq!(groups.len(), 3);
        assert_eq!(unreadable, ["a,b"]);
    }

    fn page(cursor: &Cursor) -> ReadQuery<'_> {
        ReadQuery::Page { cursor, size: 100 }
    }

    #[test]
    fn trendyol_contents_variants_and_unknown_quantities() {
        let body = r#"{"totalElements":2,"totalPages":7,"page":0,"size":100,"nextPageToken":"T1",
          "content":[
            {"contentId":1,"productMainId":"P","variants":[
               {"variantId":11,"barcode":"A","quantity":3},
               {"variantId":12,"barcode":"B","quantity":null},
               {"variantId":13,"barcode":"C"}]},
            {"contentId":2,"variants":[
               {"barcode":"","quantity":1},
               {"barcode":"E","quantity":1.5},
               {"barcode":"F","quantity":0},
               7]},
            "junk"]}"#;
        let first = Cursor::first(Provider::Trendyol);
        let p = parse_listings(Provider::Trendyol, &page(&first), body).unwrap();
        let got: Vec<(&str, Option<i64>)> = p
            .listings
            .iter()
            .map(|l| (l.key.as_str(), l.quantity))
            .collect();
        assert_eq!(
            got,
            [("A", Some(3)), ("B", None), ("C", None), ("F", Some(0))]
        );
        let bad: Vec<String> = p.bad_rows.iter().map(ToString::to_string).collect();
        assert_eq!(
            bad,
            [
                "content[1].variants[0].barcode: blank",
                "content[1].variants[1].quantity: not an integer",
                "content[1].variants[3]: not an object",
                "content[2]: not an object",
            ]
        );
        assert_eq!(p.next, Some(Cursor::TrendyolToken { token: "T1".into() }));
        assert_eq!(p.total_pages, Some(7));
    }

    #[test]
    fn trendyol_follows_the_token_else_page_numbers_else_stops() {
        let first = Cursor::first(Provider::Trendyol);
        let one = r#"{"content":[{"variants":[{"barcode":"A","quantity":1}]}]"#;
        let answer = |extra: &str| format!("{one},{extra}}}");
        // No token, more pages: next page number.
        let p = parse_listings(
            Provider::Trendyol,
            &page(&first),
            &answer(r#""page":0,"totalPages":3"#),
        )
        .unwrap();
        assert_eq!(p.next, Some(Cursor::TrendyolPage { page: 1 }));
        // No token on the last page: done.
        let last = Cursor::TrendyolPage { page: 2 };
        let p = parse_listings(
            Provider::Trendyol,
            &page(&last),
            &answer(r#""page":2,"totalPages":3"#),
        )
        .unwrap();
        assert_eq!(p.next, None);
        // A token wins, also past any window.
        let far = Cursor::TrendyolPage { page: 99 };
        let p = parse_listings(
            Provider::Trendyol,
            &page(&far),
            &answer(r#""nextPageToken":"x","totalPages":500"#),
        )
        .unwrap();
        assert_eq!(p.next, Some(Cursor::TrendyolToken { token: "x".into() }));
        // A token request answered without a token: the end.
        let tok = Cursor::TrendyolToken { token: "x".into() };
        let p = parse_listings(
            Provider::Trendyol,
            &page(&tok),
            &answer(r#""nextPageToken":null,"totalPages":500"#),
        )
        .unwrap();
        assert_eq!(p.next, None);
        // Empty content ends the scan whatever the token says.
        let p = parse_listings(
            Provider::Trendyol,
            &page(&first),
            r#"{"content":[],"nextPageToken":"y"}"#,
        )
        .unwrap();
        assert_eq!(p.next, None);
        // Reads by key never page.
        let k = keys(&["A"]);
        let p = parse_listings(
            Provider::Trendyol,
            &ReadQuery::Keys(&k),
            &answer(r#""nextPageToken":"z""#),
        )
        .unwrap();
        assert_eq!(p.next, None);
    }

    #[test]
    fn malformed_answers_name_the_field() {
        let first = Cursor::first(Provider::Trendyol);
        for (body, field, problem) in [
            ("<html>", "(body)", "not JSON"),
            ("[]", "(body)", "not a JSON object"),
            (r#"{"content":{}}"#, "content", "not an array"),
        ] {
            assert_eq!(
                parse_listings(Provider::Trendyol, &page(&first), body),
                Err(MalformedPage { field, problem }),
                "{body}"
            );
        }
        let hb = Cursor::first(Provider::Hepsiburada);
        assert_eq!(
            parse_listings(Provider::Hepsiburada, &page(&hb), r#"{"listings":"x"}"#)
                .unwrap_err()
                .to_string(),
            "malformed listings answer: listings: not an array"
        );
    }

    #[test]
    fn hepsiburada_listings_flags_and_paging() {
        let body = r#"{"totalCount":250,"limit":100,"offset":100,"listings":[
            {"listingId":"l1","hepsiburadaSku":"HBV1","merchantSku":"SKU-1","availableStock":4,
             "isLocked":true,"lockReasons":["Fiyat kontrolü"],"isFrozen":false,"freezeReasons":["x"],
             "isFulfilledByHB":false,"stockDecreaseDisabled":true,"isSuspended":true},
            {"listingId":"l2","merchantSku":"SKU-2","availableStock":null,"isFulfilledByHB":true,"isFrozen":true},
            {"listingId":"l3","availableStock":1},
            {"listingId":"l4","merchantSku":"SKU-4","availableStock":"9"}]}"#;
        let cursor = Cursor::HepsiburadaOffset { offset: 100 };
        let p = parse_listings(Provider::Hepsiburada, &page(&cursor), body).unwrap();
        assert_eq!(p.listings.len(), 2);
        let a = &p.listings[0];
        assert_eq!(
            (a.key.as_str(), a.quantity, a.listing_id.as_deref()),
            ("SKU-1", Some(4), Some("l1"))
        );
        assert_eq!(a.flags.locked, Some(vec!["Fiyat kontrolü".to_string()]));
        assert_eq!(a.flags.frozen, None, "reasons count only with the flag");
        assert!(a.flags.stock_decrease_disabled && a.flags.suspended && !a.flags.fulfilled_by_hb);
        let b = &p.listings[1];
        assert_eq!(b.quantity, None);
        assert!(b.flags.fulfilled_by_hb);
        assert_eq!(b.flags.frozen, Some(vec![]));
        let bad: Vec<String> = p.bad_rows.iter().map(ToString::to_string).collect();
        assert_eq!(
            bad,
            [
                "listings[2].merchantSku: missing",
                "listings[3].availableStock: not an integer"
            ]
        );
        // On by the four rows returned (bad ones too), not by the 100 asked for.
        assert_eq!(p.next, Some(Cursor::HepsiburadaOffset { offset: 104 }));
        assert_eq!(p.total_pages, Some(3));
        // The last page, and a null page.
        let last = Cursor::HepsiburadaOffset { offset: 246 };
        let p = parse_listings(Provider::Hepsiburada, &page(&last), body).unwrap();
        assert_eq!(p.next, None);
        let last = Cursor::HepsiburadaOffset { offset: 200 };
        let p = parse_listings(
            Provider::Hepsiburada,
            &page(&last),
            r#"{"listings":null,"totalCount":900}"#,
        )
        .unwrap();
        assert_eq!((p.listings.len(), p.next), (0, None));
        // Without a count: on until an empty page.
        let p = parse_listings(
            Provider::Hepsiburada,
            &page(&last),
            r#"{"listings":[{"listingId":"z","merchantSku":"Z","availableStock":0}]}"#,
        )
        .unwrap();
        assert_eq!(p.next, Some(Cursor::HepsiburadaOffset { offset: 201 }));
        // More rows than asked for (a repeat of earlier ones): on by the limit.
        let rows: Vec<String> = (0..5)
            .map(|i| format!(r#"{{"listingId":"r{i}","merchantSku":"R{i}","availableStock":1}}"#))
            .collect();
        let body = format!(r#"{{"totalCount":900,"listings":[{}]}}"#, rows.join(","));
        let p = parse_listings(
            Provider::Hepsiburada,
            &ReadQuery::Page {
                cursor: &last,
                size: 3,
            },
            &body,
        )
        .unwrap();
        assert_eq!(p.next, Some(Cursor::HepsiburadaOffset { offset: 203 }));
    }

    #[test]
    fn trendyol_stock_modified_dates() {
        let body = r#"{"content":[{"variants":[
            {"barcode":"A","quantity":1,"stockLastModifiedDate":1765000000123},
            {"barcode":"B","quantity":1,"stockLastModifiedDate":"2026-12-07T10:00:00Z"},
            {"barcode":"C","quantity":1,"stockLastModifiedDate":null},
            {"barcode":"D","quantity":1,"stockLastModifiedDate":"yesterday"},
            {"barcode":"E","quantity":1}]}]}"#;
        let first = Cursor::first(Provider::Trendyol);
        let p = parse_listings(Provider::Trendyol, &page(&first), body).unwrap();
        let got: Vec<Option<i64>> = p
            .listings
            .iter()
            .map(|l| l.stock_modified_at.map(|t| t.timestamp_millis()))
            .collect();
        assert_eq!(
            got,
            [
                Some(1_765_000_000_123),
                Some(1_796_637_600_000),
                None,
                None,
                None
            ]
        );
        assert!(p.bad_rows.is_empty(), "a date never rejects a listing");
    }

    #[test]
    fn cursors_are_stored_as_tagged_json() {
        let c = Cursor::TrendyolToken { token: "t".into() };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(text, r#"{"kind":"trendyol_token","token":"t"}"#);
        assert_eq!(serde_json::from_str::<Cursor>(&text).unwrap(), c);
    }
}
