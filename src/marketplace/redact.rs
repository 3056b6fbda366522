//! Masking credentials in marketplace text, in every form a service may echo them.
//!
//! Contract: [`mask`] returns `text` with every occurrence of each secret replaced by `***`,
//! where an occurrence may spell each character of the secret independently as
//!
//! * the character itself;
//! * a JSON escape: `\uXXXX` (hex in any case; a surrogate pair beyond the BMP), `\/` for
//!   `/`, `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`;
//! * its UTF-8 bytes percent-encoded (hex in any case), so both `NON_ALPHANUMERIC` and the
//!   RFC 3986 unreserved set (which leaves `-._~` literal) are matched;
//! * `+` for a space (form encoding), and a space for a `+` (a form-decoded echo).
//!
//! The alternatives are tried as a set of reachable positions (a small NFA), so a secret
//! holding `%` or `\` cannot hide behind an ambiguous reading. Besides the secrets, the token
//! after any `Basic` or `Bearer` (ASCII case-insensitive, after blanks, `+`, `%20` or
//! `\u0020`) is masked whatever it is: a gateway may echo an Authorization header that is
//! not ours. Callers mask whole texts and cut afterwards, so no part of a secret survives a
//! cut.

/// Mask of every secret, and of every `Basic`/`Bearer` token.
pub(crate) fn mask(text: &str, secrets: &[String]) -> String {
    let bytes = text.as_bytes();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let secrets: Vec<Vec<char>> = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().collect())
        .collect();
    let mut i = 0;
    while i < bytes.len() {
        // A match starts with a literal character (its first byte), or an ASCII escape.
        let b = bytes[i];
        let mut longest = None;
        if text.is_char_boundary(i) {
            for s in &secrets {
                if let Some(end) = match_at(bytes, i, s) {
                    longest = longest.max(Some(end));
                }
            }
        }
        if let Some(end) = longest {
            ranges.push((i, end));
        }
        i += if b < 0x80 { 1 } else { 1.max(utf8_len(b)) };
    }
    ranges.extend(auth_tokens(bytes));
    if ranges.is_empty() {
        return text.to_string();
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut iter = ranges.into_iter().peekable();
    while let Some((start, mut end)) = iter.next() {
        while let Some(&(s, e)) = iter.peek() {
            if s > end {
                break;
            }
            end = end.max(e);
            iter.next();
        }
        if start < at {
            // Overlapping an earlier (merged) range: extend it.
            if end > at {
                at = end;
            }
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str("***");
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

fn utf8_len(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// The end of the longest occurrence of `secret` starting at `start`, if any.
fn match_at(text: &[u8], start: usize, secret: &[char]) -> Option<usize> {
    // Cheap refusal first (bodies reach 16 MiB): every spelling starts with the literal's
    // first byte, a backslash or `%`, or, for a blank or a plus, with the other one.
    let first = *text.get(start)?;
    let c = *secret.first()?;
    let mut buf = [0u8; 4];
    let lead = c.encode_utf8(&mut buf).as_bytes()[0];
    let swapped = matches!((c, first), (' ', b'+') | ('+', b' '));
    if first != lead && first != b'\\' && first != b'%' && !swapped {
        return None;
    }
    let mut here: Vec<usize> = Vec::with_capacity(4);
    here.push(start);
    let mut next: Vec<usize> = Vec::with_capacity(4);
    for &c in secret {
        next.clear();
        for &p in &here {
            spellings(text, p, c, &mut next);
        }
        if next.is_empty() {
            return None;
        }
        next.sort_unstable();
        next.dedup();
        std::mem::swap(&mut here, &mut next);
    }
    here.into_iter().max()
}

/// Every end position of a spelling of `c` at `p`, pushed to `out`.
fn spellings(text: &[u8], p: usize, c: char, out: &mut Vec<usize>) {
    let rest = &text[p.min(text.len())..];
    let mut buf = [0u8; 4];
    let lit = c.encode_utf8(&mut buf).as_bytes();
    if rest.starts_with(lit) {
        out.push(p + lit.len());
    }
    match (c, rest.first()) {
        (' ', Some(b'+')) | ('+', Some(b' ')) => out.push(p + 1),
        _ => {}
    }
    // Percent-encoding of every UTF-8 byte, hex in any case.
    let mut q = 0;
    let mut all = true;
    for &byte in lit {
        match rest.get(q..q + 3) {
            Some([b'%', h, l]) if hex_pair(*h, *l) == Some(byte) => q += 3,
            _ => {
                all = false;
                break;
            }
        }
    }
    if all {
        out.push(p + q);
    }
    if rest.first() == Some(&b'\\') {
        let short = match c {
            '/' => Some(b'/'),
            '"' => Some(b'"'),
            '\\' => Some(b'\\'),
            '\u{8}' => Some(b'b'),
            '\u{c}' => Some(b'f'),
            '\n' => Some(b'n'),
            '\r' => Some(b'r'),
            '\t' => Some(b't'),
            _ => None,
        };
        if short.is_some() && rest.get(1) == short.as_ref() {
            out.push(p + 2);
        }
        let mut units = [0u16; 2];
        let mut q = 0;
        let mut all = true;
        for &unit in c.encode_utf16(&mut units).iter() {
            match rest.get(q..q + 6).and_then(u_escape) {
                Some(u) if u == unit => q += 6,
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            out.push(p + q);
        }
    }
}

/// The code unit of `\uXXXX` (any hex case).
fn u_escape(s: &[u8]) -> Option<u16> {
    if s.len() != 6 || s[0] != b'\\' || s[1] != b'u' {
        return None;
    }
    let hi = hex_pair(s[2], s[3])?;
    let lo = hex_pair(s[4], s[5])?;
    Some(u16::from(hi) << 8 | u16::from(lo))
}

fn hex_pair(h: u8, l: u8) -> Option<u8> {
    let d = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    Some(d(h)? << 4 | d(l)?)
}

/// Ranges of the tokens after `Basic` / `Bearer`.
fn auth_tokens(text: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for scheme in [&b"basic"[..], &b"bearer"[..]] {
        let mut i = 0;
        while i + scheme.len() <= text.len() {
            let word = &text[i..i + scheme.len()];
            let boundary = i == 0 || !text[i - 1].is_ascii_alphanumeric();
            if !(boundary && word.eq_ignore_ascii_case(scheme)) {
                i += 1;
                continue;
            }
            let mut p = i + scheme.len();
            let sep_start = p;
            loop {
                let rest = &text[p..];
                let step = if rest
                    .first()
                    .is_some_and(|b| matches!(b, b' ' | b'\t' | b'+'))
                {
                    1
                } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%20") {
                    3
                } else if rest.len() >= 6 && rest[..6].eq_ignore_ascii_case(b"\\u0020") {
                    6
                } else {
                    0
                };
                if step == 0 {
                    break;
                }
                p += step;
            }
            let token_start = p;
            while p < text.len()
                && (text[p].is_ascii_alphanumeric()
                    || matches!(
                        text[p],
                        b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'\\' | b'%'
                    ))
            {
                p += 1;
            }
            if token_start > sep_start && p > token_start {
                out.push((token_start, p));
            }
            i = p.max(i + 1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str, secrets: &[&str]) -> String {
        let s: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        mask(text, &s)
    }

    #[test]
    fn every_spelling_of_each_character() {
        let secret = "a+b/c d~é";
        for spelled in [
            "a+b/c d~é",
            r"a\u002Bb\/c d~é",
            r"a\u002bb\u002Fc\u0020d\u007e\u00E9",
            "a%2Bb%2Fc%20d%7E%C3%A9",
            "a%2bb%2fc%20d~%c3%a9",
            "a%2Bb%2Fc+d~%C3%A9",
            "a b/c d~é",
            r"a%2Bb\/c+d~\u00e9",
        ] {
            assert_eq!(
                m(&format!("x[{spelled}]y"), &[secret]),
                "x[***]y",
                "{spelled}"
            );
        }
        assert_eq!(
            m("x[a+b/c d~]y", &[secret]),
            "x[a+b/c d~]y",
            "a prefix is no match"
        );
    }

    #[test]
    fn json_short_escapes_and_astral_characters() {
        assert_eq!(
            m(r#"{"s":"q\"w\\e\ne"}"#, &["q\"w\\e\ne"]),
            r#"{"s":"***"}"#
        );
        assert_eq!(m(r"k\ud83d\ude00k", &["k😀k"]), "***");
        assert_eq!(m("k😀k", &["k😀k"]), "***");
    }

    #[test]
    fn ambiguous_percent_in_the_secret() {
        // The secret holds `%25`: literal, or its `%` encoded.
        assert_eq!(m("<%25>", &["%25"]), "<***>");
        assert_eq!(m("<%2525>", &["%25"]), "<***>");
    }

    #[test]
    fn overlapping_and_adjacent_secrets_merge() {
        assert_eq!(m("abcdef", &["abcd", "cdef"]), "***");
        assert_eq!(m("abcd-abcd", &["abcd"]), "***-***");
        assert_eq!(m("nothing here", &["abcd", ""]), "nothing here");
    }

    #[test]
    fn any_basic_or_bearer_token() {
        assert_eq!(
            m(
                "Authorization: Basic Zm9vOmJhcg== and bearer%20x.y_z-1",
                &[]
            ),
            "Authorization: Basic *** and bearer%20***"
        );
        assert_eq!(m(r"BASIC\u0020abc\/d+e= ok", &[]), r"BASIC\u0020*** ok");
        assert_eq!(m("Basicness stays", &[]), "Basicness stays");
        assert_eq!(m("Bearer", &[]), "Bearer");
    }
}
