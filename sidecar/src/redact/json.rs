//! The string values of a JSON body, found by a byte walk (no tree), rewritten in place: a
//! string without escapes is scanned as it is written; one with escapes is decoded, scanned and,
//! if anything changed, encoded again. Keys and the values of a few keys that hold identifiers,
//! enumerations or inline binary data (`model`, `role`, `type`, base64 `data`, data URLs) are
//! left alone.

use super::Escape;

/// Keys whose string values are never scanned.
const SKIP_KEYS: &[&[u8]] = &[
    b"model",
    b"role",
    b"type",
    b"id",
    b"object",
    b"tool_call_id",
    b"tool_use_id",
    b"finish_reason",
    b"stop_reason",
    b"media_type",
    b"data",
    b"encoding_format",
    b"system_fingerprint",
    b"detail",
    b"format",
    b"signature",
];

/// Whether the string values of `key` are left alone.
pub(crate) fn is_skipped(key: &[u8]) -> bool {
    SKIP_KEYS.contains(&key)
}

/// Keys whose string values are JSON text (a tool call's arguments).
const JSON_TEXT_KEYS: &[&[u8]] = &[b"arguments", b"partial_json"];

/// A data URL's marker, looked for near the start of a string (inline images and audio).
const DATA_URL: &[u8] = b"data:";

/// Rewrite the string values of the JSON document `body`. `f` gets each value's key (empty in
/// an array at the top level), its text (decoded when it has escapes) and how a value written
/// into it must be escaped; it appends the text's replacement to its buffer and says whether it
/// changed anything. The new document, if anything changed.
pub fn rewrite_strings(
    body: &[u8],
    mut f: impl FnMut(&[u8], &[u8], Escape, &mut Vec<u8>) -> bool,
) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    // Bytes of `body` copied to `out` so far.
    let mut copied = 0;
    let mut at = 0;
    let mut key: std::ops::Range<usize> = 0..0;
    let mut scratch = Vec::new();
    while let Some(q) = memchr::memchr(b'"', &body[at..]) {
        let start = at + q + 1;
        let (end, escaped) = string_end(body, start)?;
        at = end + 1;
        let next = body[at..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .copied();
        if next == Some(b':') {
            key = start..end;
            continue;
        }
        let k = &body[key.clone()];
        let content = &body[start..end];
        if is_skipped(k) || content.starts_with(DATA_URL) {
            continue;
        }
        let json_text = JSON_TEXT_KEYS.contains(&k);
        scratch.clear();
        let replacement: Option<Vec<u8>> = if escaped {
            let Some(text) = unescape(content) else {
                continue;
            };
            let escape = if json_text {
                Escape::Json
            } else {
                Escape::Plain
            };
            if !f(k, &text, escape, &mut scratch) {
                continue;
            }
            let Ok(encoded) = serde_json::to_vec(&String::from_utf8_lossy(&scratch)) else {
                continue;
            };
            // Without the quotes: the range replaced is the content.
            Some(encoded[1..encoded.len() - 1].to_vec())
        } else {
            if !f(k, content, Escape::Json, &mut scratch) {
                continue;
            }
            Some(std::mem::take(&mut scratch))
        };
        if let Some(replacement) = replacement {
            let o = out.get_or_insert_with(|| Vec::with_capacity(body.len() + 64));
            o.extend_from_slice(&body[copied..start]);
            o.extend_from_slice(&replacement);
            copied = end;
        }
    }
    let mut o = out?;
    o.extend_from_slice(&body[copied..]);
    Some(o)
}

/// Where the string whose content starts at `start` ends (its closing quote), and whether it
/// has escapes; `None` for an unterminated string.
fn string_end(body: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut j = start;
    let mut escaped = false;
    loop {
        let k = memchr::memchr2(b'"', b'\\', body.get(j..)?)?;
        if body[j + k] == b'\\' {
            escaped = true;
            j += k + 2;
        } else {
            return Some((j + k, escaped));
        }
    }
}

/// JSON string content decoded; `None` if it is not valid.
pub fn unescape(content: &[u8]) -> Option<Vec<u8>> {
    let mut quoted = Vec::with_capacity(content.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(content);
    quoted.push(b'"');
    serde_json::from_slice::<String>(&quoted)
        .ok()
        .map(String::into_bytes)
}

/// `text` written as JSON string content (without quotes) into `out`.
pub fn escape_into(text: &[u8], out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(text);
    if let Ok(encoded) = serde_json::to_vec(&*text) {
        out.extend_from_slice(&encoded[1..encoded.len() - 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(body: &str) -> Option<String> {
        rewrite_strings(body.as_bytes(), |_, text, _, out| {
            out.extend(text.to_ascii_uppercase());
            text.iter().any(u8::is_ascii_lowercase)
        })
        .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn values_are_rewritten_keys_and_identifiers_are_not() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi \"you\"\n"},
            {"role":"assistant","content":[{"type":"text","text":"ok"}]}],"stop":["x"],
            "image":{"type":"base64","media_type":"image/png","data":"abc"},
            "url":"data:image/png;base64,abc"}"#;
        let out = upper(body).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "m");
        assert_eq!(v["messages"][0]["role"], "user");
        assert_eq!(v["messages"][0]["content"], "HI \"YOU\"\n");
        assert_eq!(v["messages"][1]["content"][0]["type"], "text");
        assert_eq!(v["messages"][1]["content"][0]["text"], "OK");
        assert_eq!(v["stop"][0], "X");
        assert_eq!(v["image"]["data"], "abc");
        assert_eq!(v["url"], "data:image/png;base64,abc");
        assert_eq!(upper(r#"{"n":1,"a":"B"}"#), None, "nothing changed");
    }

    #[test]
    fn escapes_round_trip() {
        assert_eq!(unescape(br"a\nb\u0041").unwrap(), b"a\nbA");
        let mut out = Vec::new();
        escape_into(b"line\n\"q\"", &mut out);
        assert_eq!(out, br#"line\n\"q\""#);
        assert_eq!(string_end(br#"ab\"c"x"#, 0), Some((5, true)));
        assert_eq!(string_end(br#"abc"#, 0), None);
    }
}
