//! Byte edits of one stream event, for the relay: removing the `usage` the gateway asked an
//! OpenAI provider for (the client did not), and splicing the cost extension field into the
//! usage the client does see. No JSON tree: the event is found by the relay's own pass, the key
//! by a search for its quoted name followed by a colon (a quote inside a JSON string is escaped,
//! so a match is a key), the value's extent by skipping it with `serde_json`.

use std::ops::Range;

use serde::de::IgnoredAny;

/// The name of the cost extension field, in the usage object of the final usage event.
pub const COST_FIELD: &str = "gatehouse_cost_usd";

/// The last member `"key": value` of `event`: where its key starts and its value's range.
fn member(event: &[u8], key: &str) -> Option<(usize, Range<usize>)> {
    let quoted_len = key.len() + 2;
    let finder = memchr::memmem::FinderRev::new(key.as_bytes());
    let mut end = event.len();
    while let Some(at) = finder.rfind(&event[..end]) {
        end = at;
        let (Some(start), after) = (at.checked_sub(1), at + key.len()) else {
            return None;
        };
        if event[start] != b'"'
            || event.get(after) != Some(&b'"')
            || (start > 0 && event[start - 1] == b'\\')
        {
            continue;
        }
        let mut i = start + quoted_len;
        while event.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if event.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        while event.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        let mut values =
            serde_json::Deserializer::from_slice(&event[i..]).into_iter::<IgnoredAny>();
        return match values.next() {
            Some(Ok(_)) => Some((start, i..i + values.byte_offset())),
            _ => None,
        };
    }
    None
}

/// The bytes to delete from `event` to remove its member `key` with the comma that joins it
/// to its neighbour, if it has one.
pub fn without(event: &[u8], key: &str) -> Option<Range<usize>> {
    let (start, value) = member(event, key)?;
    let before = event[..start]
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())?;
    if event[before] == b',' {
        return Some(before..value.end);
    }
    let after = event[value.end..]
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|p| value.end + p);
    match after {
        Some(comma) if event[comma] == b',' => Some(start..comma + 1),
        _ => Some(start..value.end),
    }
}

/// Where to write the cost field into the object value of `event`'s member `key` (just after
/// its `{`), and whether a comma must follow it (the object is not empty).
pub fn cost_at(event: &[u8], key: &str) -> Option<(usize, bool)> {
    let (_, value) = member(event, key)?;
    if event.get(value.start) != Some(&b'{') {
        return None;
    }
    let inside = value.start + 1;
    let empty = event[inside..value.end]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        == Some(&b'}');
    Some((inside, !empty))
}

/// The cost as the header and the extension field write it: USD with 8 decimals (a hundredth of
/// a micro-dollar), or `null` in JSON for an unpriced model.
pub fn write_cost(out: &mut Vec<u8>, cost: Option<f64>) {
    use std::io::Write as _;
    match cost {
        // Writing into a Vec cannot fail.
        Some(c) => {
            let _ = write!(out, "{c:.8}");
        }
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(event: &str, range: Range<usize>) -> String {
        let mut s = event.to_string();
        s.replace_range(range, "");
        s
    }

    #[test]
    fn usage_members_are_removed_with_their_comma() {
        let last = r#"data: {"id":"x","choices":[{"delta":{"content":"usage"}}],"usage":null}"#;
        let r = without(last.as_bytes(), "usage").unwrap();
        assert_eq!(
            apply(last, r),
            r#"data: {"id":"x","choices":[{"delta":{"content":"usage"}}]}"#
        );
        let first = r#"{ "usage" : {"prompt_tokens":1} , "id":"x"}"#;
        let r = without(first.as_bytes(), "usage").unwrap();
        assert_eq!(apply(first, r), r#"{  "id":"x"}"#);
        // A quoted "usage" inside a string is escaped, not a key.
        let escaped = r#"{"content":"say \"usage\": 1"}"#;
        assert_eq!(without(escaped.as_bytes(), "usage"), None);
    }

    #[test]
    fn the_cost_goes_first_in_the_usage_object() {
        let e = br#"data: {"choices":[],"usage":{"prompt_tokens":3}}"#;
        let (at, comma) = cost_at(e, "usage").unwrap();
        assert_eq!((&e[at..at + 1], comma), (&b"\""[..], true));
        let e = br#"{"usage": { }}"#;
        assert_eq!(cost_at(e, "usage"), Some((11, false)));
        assert_eq!(cost_at(br#"{"usage":null}"#, "usage"), None);
        let mut out = Vec::new();
        write_cost(&mut out, Some(0.000_123_456_789));
        assert_eq!(out, b"0.00012346");
    }
}
