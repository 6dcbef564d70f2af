//! Text that comes from outside (the media server's names, titles and error texts) as the
//! product passes it on to logs, status.json, webhooks and the CLI: bounded and printable.
//!
//! A server can send anything in a name: a terminal escape sequence that rewrites the
//! administrator's screen in `logread`, a newline that forges a second syslog line, or a
//! megabyte that every status write and webhook then carries. Adapters clean such text where
//! it enters, once, so nothing downstream has to think about it.

/// Longest user, client or device name kept (characters).
pub const MAX_NAME: usize = 128;
/// Longest id kept verbatim (characters); real ones have 32 to 38.
pub const MAX_ID: usize = 256;
/// Longest title or error text kept (characters).
pub const MAX_TEXT: usize = 256;

/// `s` with every control character escaped (`\n`, `\t`, `\u{1b}`, …) and at most
/// `max_chars` characters of the original kept; a cut is marked with `…`. The escapes count
/// as the character they replace, so the result is at most `max_chars + 1` characters of
/// original text, each control character growing to at most 8 bytes.
pub fn clean(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 4 + 4));
    for (n, c) in s.chars().enumerate() {
        if n == max_chars {
            out.push('…');
            break;
        }
        if is_unsafe(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                _ => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Control characters (C0, DEL, C1) and the invisible formatting characters that reorder or
/// split what a terminal or a browser shows (bidi overrides and isolates, line and paragraph
/// separators).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The longest prefix of `s` of at most `max_bytes` bytes that ends on a char boundary.
pub fn cut(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_cuts_on_char_boundaries() {
        assert_eq!(clean("alice", 128), "alice");
        assert_eq!(clean("a\nb\tc\r", 128), "a\\nb\\tc\\r");
        assert_eq!(clean("\x1b[2Jx", 128), "\\u{1b}[2Jx");
        assert_eq!(
            clean("x\u{7f}\u{85}\u{202e}y", 128),
            "x\\u{7f}\\u{85}\\u{202e}y"
        );
        assert_eq!(clean("åäöü", 2), "åä…");
        assert_eq!(clean("åä", 2), "åä");
        assert_eq!(clean("", 0), "");
        let long = "é".repeat(100_000);
        assert_eq!(clean(&long, MAX_NAME).chars().count(), MAX_NAME + 1);
        assert_eq!(cut("åäö", 3), "å");
        assert_eq!(cut("åäö", 4), "åä");
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("😀", 3), "");
    }

    proptest::proptest! {
        #[test]
        fn cleaned_text_is_bounded_and_printable(s in ".*", max in 0usize..64) {
            let c = clean(&s, max);
            proptest::prop_assert!(c.chars().all(|ch| !is_unsafe(ch)));
            proptest::prop_assert!(c.chars().count() <= max * 8 + 1);
            proptest::prop_assert!(cut(&s, max).len() <= max);
        }
    }
}
