//! The semantic key of a request: what must match exactly, and the text that is embedded.
//!
//! The whole request is the key. The last user message is compared by meaning (its embedding,
//! then the guards); everything else must be equal: the system prompt, every earlier message,
//! the model, tools, sampling and other parameters, the Route and the scope. That part is hashed
//! into [`Key::context`]; the index only compares vectors of entries with the same context, so a
//! different system prompt, model or `temperature` never shares an entry, and a paraphrase in
//! the same conversation does.
//!
//! No semantic key (exact cache only) when the last message is not a user message of plain text
//! (tool results, images, audio), or when its text is longer than [`MAX_TEXT_CHARS`]: an
//! embedding model reads a bounded number of tokens, and two long prompts differing past that
//! bound would embed the same.

use std::hash::{BuildHasher, Hasher};

use serde_json::Value;

use crate::dialect::Dialect;

/// Longest last message (in characters) a semantic key is made of (all-MiniLM-L6-v2 reads 256
/// tokens, about 1,000 characters of English).
pub const MAX_TEXT_CHARS: usize = 1000;

/// Top-level fields left out of the context, as the exact key leaves them out.
const IGNORED: [&str; 8] = [
    "model",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "safety_identifier",
    "prompt_cache_key",
];

/// What a semantic lookup compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Hash of everything that must match exactly (scope, Route, model, parameters, the
    /// conversation before the last user message).
    pub context: u64,
    /// The last user message's text: embedded, and what the guards read.
    pub text: String,
}

/// The semantic key of `body` (a chat request in `dialect`) on `route` in `scope` (with anything
/// else that must match, such as the headers routing rules read); `None` when the request has
/// none (see the module docs). The dialect is part of the context: an entry is an answer in the
/// dialect of the client that filled it.
pub fn of(body: &[u8], dialect: Dialect, route: &str, scope: &str) -> Option<Key> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    // What the exact key leaves out leaves this context too: the model alias (the Route is
    // hashed), how the answer is delivered (a hit is rendered as asked), who asks.
    for field in IGNORED {
        obj.remove(field);
    }
    let text = match dialect {
        Dialect::OpenAi | Dialect::Anthropic => {
            let last = obj.get_mut("messages")?.as_array_mut()?.last_mut()?;
            take_user_text(last, "text")?
        }
        Dialect::Responses => match obj.get_mut("input")? {
            Value::String(s) => std::mem::take(s),
            Value::Array(items) => take_user_text(items.last_mut()?, "input_text")?,
            _ => return None,
        },
    };
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return None;
    }
    let rest = serde_json::to_vec(&v).ok()?;
    // A fixed seed: the hash only has to be stable within this process.
    let mut h = foldhash::fast::FixedState::with_seed(0x5e3a_41c0_9d1b_2277).build_hasher();
    let dialect_name = format!("{dialect:?}");
    for part in [
        scope.as_bytes(),
        route.as_bytes(),
        dialect_name.as_bytes(),
        &rest,
    ] {
        h.write_usize(part.len());
        h.write(part);
    }
    Some(Key {
        context: h.finish(),
        text,
    })
}

/// The text of a user message (content a string, or parts all of `text_type`), taken out of it.
fn take_user_text(message: &mut Value, text_type: &str) -> Option<String> {
    let m = message.as_object_mut()?;
    if m.get("role")?.as_str()? != "user" {
        return None;
    }
    match m.get_mut("content")? {
        Value::String(s) => Some(std::mem::take(s)),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts.iter() {
                let p = p.as_object()?;
                if p.get("type")?.as_str()? != text_type || p.len() != 2 {
                    return None;
                }
                out.push(p.get("text")?.as_str()?.to_string());
            }
            parts.clear();
            Some(out.join("\n"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(system: &str, user: &str, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{user}"}}]{extra}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn the_last_user_message_is_embedded_the_rest_must_match() {
        let a = of(
            &chat("be brief", "hi there", ""),
            Dialect::OpenAi,
            "r",
            "ns",
        )
        .unwrap();
        let b = of(&chat("be brief", "hello", ""), Dialect::OpenAi, "r", "ns").unwrap();
        assert_eq!(a.text, "hi there");
        assert_eq!(a.context, b.context);
        // Another system prompt, parameter, route or scope: another context.
        let other = [
            of(
                &chat("be verbose", "hi there", ""),
                Dialect::OpenAi,
                "r",
                "ns",
            ),
            of(
                &chat("be brief", "hi there", r#","temperature":0.5"#),
                Dialect::OpenAi,
                "r",
                "ns",
            ),
            of(
                &chat("be brief", "hi there", ""),
                Dialect::OpenAi,
                "r2",
                "ns",
            ),
            of(
                &chat("be brief", "hi there", ""),
                Dialect::OpenAi,
                "r",
                "ns2",
            ),
        ];
        for k in other {
            assert_ne!(k.unwrap().context, a.context);
        }
        // Another alias of the same Route, another `user`: the same context (as the exact key).
        let alias = String::from_utf8(chat("be brief", "hi there", r#","user":"u2""#))
            .unwrap()
            .replace(r#""model":"m""#, r#""model":"n""#);
        let alias = of(alias.as_bytes(), Dialect::OpenAi, "r", "ns").unwrap();
        assert_eq!(alias.context, a.context);
        // Another dialect: another context.
        let anth = of(
            &chat("be brief", "hi there", ""),
            Dialect::Anthropic,
            "r",
            "ns",
        );
        assert_ne!(anth.unwrap().context, a.context);
        // Stream or not: the same context.
        let s = of(
            &chat("be brief", "hi there", r#","stream":true"#),
            Dialect::OpenAi,
            "r",
            "ns",
        );
        assert_eq!(s.unwrap().context, a.context);
    }

    #[test]
    fn earlier_turns_are_part_of_the_context() {
        let conv = |first: &str| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"{first}"}},{{"role":"assistant","content":"ok"}},{{"role":"user","content":"and then?"}}]}}"#
            )
        };
        let a = of(
            conv("tell me about cats").as_bytes(),
            Dialect::OpenAi,
            "r",
            "s",
        )
        .unwrap();
        let b = of(
            conv("tell me about dogs").as_bytes(),
            Dialect::OpenAi,
            "r",
            "s",
        )
        .unwrap();
        assert_eq!(a.text, b.text);
        assert_ne!(a.context, b.context);
    }

    #[test]
    fn anthropic_and_responses_shapes() {
        let anth = br#"{"model":"m","max_tokens":10,"system":"s","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#;
        assert_eq!(of(anth, Dialect::Anthropic, "r", "s").unwrap().text, "a\nb");
        let resp = br#"{"model":"m","input":"what is rust"}"#;
        assert_eq!(
            of(resp, Dialect::Responses, "r", "s").unwrap().text,
            "what is rust"
        );
        let items = br#"{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"q"}]}]}"#;
        assert_eq!(of(items, Dialect::Responses, "r", "s").unwrap().text, "q");
    }

    #[test]
    fn no_key_for_tool_results_images_long_text_or_garbage() {
        let tool =
            br#"{"model":"m","messages":[{"role":"tool","tool_call_id":"1","content":"42"}]}"#;
        assert!(of(tool, Dialect::OpenAi, "r", "s").is_none());
        let image = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        assert!(of(image, Dialect::OpenAi, "r", "s").is_none());
        let long = chat("s", &"x".repeat(MAX_TEXT_CHARS + 1), "");
        assert!(of(&long, Dialect::OpenAi, "r", "s").is_none());
        for garbage in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"messages":[]}"#,
            br#"{"messages":[{"role":"user","content":"  "}]}"#,
        ] {
            assert!(of(garbage, Dialect::OpenAi, "r", "s").is_none());
        }
    }
}
