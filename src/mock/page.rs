//! The small HTML page at `/`: accounts, their stock and the latest requests.
//! Refreshes itself every 2 seconds; every dynamic string is HTML-escaped.

use std::fmt::Write;

use super::state::{MockState, RequestRecord};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn render(state: &MockState, recent: &[RequestRecord]) -> String {
    let e = escape_html;
    let mut h = String::new();
    h.push_str(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\">\
         <title>stocksync mock marketplace</title>\
         <style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}\
         td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}th{background:#eee}\
         .n{text-align:right}</style></head><body>\n\
         <h1>Mock marketplace</h1>\n",
    );
    if state.accounts.is_empty() {
        h.push_str("<p>No accounts yet.</p>\n");
    }
    for a in &state.accounts {
        let _ = writeln!(
            h,
            "<h2>{} seller {}{}</h2>",
            e(a.marketplace.as_str()),
            e(&a.seller_id),
            if a.configured { "" } else { " (open)" }
        );
        match &a.listings {
            Some(l) => {
                let _ = writeln!(h, "<p>{} known listings</p>", l.len());
            }
            None => h.push_str("<p>every barcode/sku is known</p>\n"),
        }
        if a.stock.is_empty() {
            h.push_str("<p><i>no stock received</i></p>\n");
            continue;
        }
        h.push_str("<table><tr><th>barcode / sku</th><th>quantity</th></tr>\n");
        for (k, q) in &a.stock {
            let _ = writeln!(h, "<tr><td>{}</td><td class=\"n\">{q}</td></tr>", e(k));
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Latest requests</h2>\n<table><tr><th>#</th><th>time</th><th>marketplace</th><th>seller</th><th>method</th><th>path</th><th>status</th><th>items</th><th>unchanged</th><th>failed</th><th>note</th></tr>\n");
    for r in recent.iter().rev() {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            r.seq,
            e(&r.time),
            e(r.marketplace.map_or("", |m| m.as_str())),
            e(r.seller_id.as_deref().unwrap_or("")),
            e(&r.method),
            e(&r.path),
            if r.status == 0 { "reset".to_string() } else { r.status.to_string() },
            r.item_count,
            r.unchanged_items,
            r.failed_items,
            e(r.note.as_deref().unwrap_or("")),
        );
    }
    h.push_str("</table>\n<p>JSON: <a href=\"/_mock/state\">state</a>, <a href=\"/_mock/requests\">requests</a>, <a href=\"/_mock/faults\">faults</a></p>\n</body></html>\n");
    h
}
