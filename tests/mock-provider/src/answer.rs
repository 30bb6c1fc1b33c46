//! What the mock answers, decided once for every flavour: the words, or a tool call, why it
//! stopped, and the token counts. Each flavour reads its request into a [`Prompt`] and renders
//! the [`Answer`] in its own shape.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::behaviour::{Behaviour, ToolCall};
use crate::openai::answer_words;

/// What the mock needs to know about a request, whatever its flavour.
#[derive(Debug, Default)]
pub(crate) struct Prompt {
    /// Whitespace-separated words of every text in the request (system, messages, tool
    /// results): the input token count.
    pub(crate) words: u64,
    /// Names of the declared tools.
    pub(crate) tools: Vec<String>,
    /// Text of the last message when a user wrote it (not a tool result).
    pub(crate) last_user_text: String,
    /// The last message carries a tool result: answer it with text, never call again.
    pub(crate) ends_with_tool_result: bool,
    /// The output limit, if the request sets one.
    pub(crate) max_tokens: Option<u64>,
    /// What the request's tool choice demands (each flavour's `tool_choice` / `toolChoice` /
    /// `functionCallingConfig`), if anything but the model's own choice.
    pub(crate) tool_choice: Option<Forced>,
    /// Input schemas of the declared tools, by name: a forced call's arguments follow them.
    pub(crate) tool_schemas: Vec<(String, serde_json::Value)>,
    /// The request forbids more than one tool call per answer (OpenAI `parallel_tool_calls:
    /// false`, Anthropic `disable_parallel_tool_use: true`).
    pub(crate) single_call: bool,
    /// The request asks for JSON text (`response_format`, `output_config.format`,
    /// `outputConfig.textFormat`, `responseSchema`): the schema the answer follows (`{}` for any
    /// JSON object).
    pub(crate) json_schema: Option<serde_json::Value>,
}

/// A tool choice that is not the model's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Forced {
    /// Never call a tool.
    None,
    /// Call some tool (the behaviour's, else the first declared).
    Any,
    /// Call this tool.
    Named(String),
}

/// Why the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Natural end.
    Stop,
    /// Hit the request's output limit.
    Length,
    /// Stopped to call a tool.
    ToolUse,
}

/// A tool call in the answer, with its arguments cut into the pieces a stream sends.
#[derive(Debug)]
pub(crate) struct PlannedCall {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: serde_json::Value,
    /// The compact JSON of `arguments`.
    pub(crate) arguments_json: String,
    /// `arguments_json` in up to three pieces, for partial-JSON deltas.
    pub(crate) pieces: Vec<String>,
}

/// The answer to one request.
#[derive(Debug)]
pub(crate) struct Answer<'a> {
    /// Text words (empty when the answer is a tool call; one word of compact JSON when the
    /// request asked for JSON).
    pub(crate) words: Vec<std::borrow::Cow<'a, str>>,
    /// The words are pieces to send exactly as they are (`Behaviour::pieces`).
    pub(crate) verbatim: bool,
    /// The tool calls, in order (empty for a text answer; more than one for parallel calls).
    pub(crate) tool_calls: Vec<PlannedCall>,
    pub(crate) finish: Finish,
    /// Words in the prompt.
    pub(crate) input_tokens: u64,
    /// Words answered (or argument pieces for a tool call) plus reasoning tokens.
    pub(crate) output_tokens: u64,
    /// Prompt tokens reported as served from a cache (capped at the prompt).
    pub(crate) cached_tokens: u64,
    /// Prompt tokens reported as written to the cache (capped at the rest of the prompt).
    pub(crate) cache_write_tokens: u64,
    /// Of `output_tokens`, those spent reasoning.
    pub(crate) reasoning_tokens: u64,
}

impl<'a> Answer<'a> {
    /// Plan the answer to `prompt` for `model` under `behaviour`; tool call ids start with
    /// `id_prefix`.
    pub(crate) fn plan(
        behaviour: &'a Behaviour,
        model: &'a str,
        prompt: &Prompt,
        id_prefix: &str,
    ) -> Self {
        let schema_of = |name: &str| {
            prompt
                .tool_schemas
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| sample(s, s))
                .unwrap_or_else(|| serde_json::json!({}))
        };
        let forced = |name: String| {
            // The behaviour's call when it names this tool; else arguments from its schema.
            match &behaviour.tool_call {
                Some(call) if call.name == name => call.clone(),
                _ => ToolCall::new(name.clone(), schema_of(&name)),
            }
        };
        let mut calls: Vec<ToolCall> = if prompt.tool_choice == Some(Forced::None) {
            Vec::new()
        } else if let Some(Forced::Named(name)) = &prompt.tool_choice {
            vec![forced(name.clone())]
        } else if prompt.tool_choice == Some(Forced::Any) {
            match chosen(behaviour, prompt, false) {
                calls if !calls.is_empty() => calls,
                _ => {
                    let name = ToolCall::auto(&prompt.tools)
                        .map(|c| c.name)
                        .unwrap_or_default();
                    vec![forced(name)]
                }
            }
        } else if prompt.ends_with_tool_result {
            Vec::new()
        } else {
            chosen(behaviour, prompt, true)
        };
        if prompt.single_call {
            calls.truncate(1);
        }
        let cached_tokens = behaviour.cached_tokens.min(prompt.words);
        let cache_write_tokens = behaviour
            .cache_write_tokens
            .min(prompt.words - cached_tokens);
        let reasoning_tokens = behaviour.reasoning_tokens;
        if !calls.is_empty() {
            let tool_calls: Vec<PlannedCall> = calls
                .into_iter()
                .map(|call| {
                    let arguments_json = serde_json::to_string(&call.arguments).unwrap_or_default();
                    let pieces = split_in_three(&arguments_json);
                    PlannedCall {
                        id: next_id(id_prefix),
                        name: call.name,
                        arguments: call.arguments,
                        arguments_json,
                        pieces,
                    }
                })
                .collect();
            let pieces: usize = tool_calls.iter().map(|c| c.pieces.len()).sum();
            return Self {
                words: Vec::new(),
                verbatim: false,
                output_tokens: pieces as u64 + behaviour.reasoning_tokens,
                tool_calls,
                finish: Finish::ToolUse,
                input_tokens: prompt.words,
                cached_tokens,
                cache_write_tokens,
                reasoning_tokens,
            };
        }
        let mut words: Vec<std::borrow::Cow<'a, str>> = match &prompt.json_schema {
            // Compact JSON whose strings have no spaces: one word, whole in one chunk.
            Some(schema) => vec![sample(schema, schema).to_string().into()],
            None => answer_words(behaviour, model)
                .into_iter()
                .map(Into::into)
                .collect(),
        };
        let mut finish = Finish::Stop;
        if let Some(limit) = prompt.max_tokens
            && (words.len() as u64) > limit
        {
            words.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            finish = Finish::Length;
        }
        Self {
            output_tokens: words.len() as u64 + behaviour.reasoning_tokens,
            words,
            verbatim: behaviour.pieces.is_some(),
            tool_calls: Vec::new(),
            finish,
            input_tokens: prompt.words,
            cached_tokens,
            cache_write_tokens,
            reasoning_tokens,
        }
    }

    /// The whole text, words joined by spaces (pieces: joined as they are).
    pub(crate) fn text(&self) -> String {
        if self.verbatim {
            return self.words.concat();
        }
        self.words.join(" ")
    }

    /// The text of stream chunk `i`: the word, with a leading space after the first (a piece
    /// as it is).
    pub(crate) fn chunk_text(&self, i: usize) -> String {
        if self.verbatim {
            return self.words.get(i).map(|w| w.to_string()).unwrap_or_default();
        }
        match self.words.get(i) {
            Some(word) if i > 0 => format!(" {word}"),
            Some(word) => word.to_string(),
            None => String::new(),
        }
    }
}

/// The calls the model makes of its own accord: the behaviour's (`tool_calls`, else
/// `tool_call`); else, when the last user message names two or more declared tools, a call of
/// each (parallel calls, arguments from their schemas); else, with `weather`, the call of
/// [`ToolCall::auto`] when it mentions "weather"; else none.
fn chosen(behaviour: &Behaviour, prompt: &Prompt, weather: bool) -> Vec<ToolCall> {
    if !behaviour.tool_calls.is_empty() {
        return behaviour.tool_calls.clone();
    }
    if let Some(call) = &behaviour.tool_call {
        return vec![call.clone()];
    }
    let named = named_tools(&prompt.tools, &prompt.last_user_text);
    if named.len() > 1 {
        return named
            .into_iter()
            .map(|name| {
                let arguments = prompt
                    .tool_schemas
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, s)| sample(s, s))
                    .unwrap_or_else(|| serde_json::json!({}));
                ToolCall::new(name.clone(), arguments)
            })
            .collect();
    }
    if weather && prompt.last_user_text.to_lowercase().contains("weather") {
        return ToolCall::auto(&prompt.tools).into_iter().collect();
    }
    Vec::new()
}

/// The declared tools whose names appear as words of `text` (words are runs of letters, digits,
/// `_` and `-`), in declaration order.
fn named_tools<'t>(declared: &'t [String], text: &str) -> Vec<&'t String> {
    let words: std::collections::HashSet<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    declared
        .iter()
        .filter(|name| words.contains(name.as_str()))
        .collect()
}

fn split_in_three(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    let size = chars.len().div_ceil(3);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

/// A value that follows the JSON schema `schema` (`root` resolves `$ref`s): objects with every
/// property, the first of an `enum`/`anyOf`/`oneOf`, strings `"mock"`, numbers 1, one array item.
pub(crate) fn sample(schema: &serde_json::Value, root: &serde_json::Value) -> serde_json::Value {
    sample_at(schema, root, 0)
}

fn sample_at(
    schema: &serde_json::Value,
    root: &serde_json::Value,
    depth: u32,
) -> serde_json::Value {
    use serde_json::{Value, json};
    if depth > 16 {
        return Value::Null;
    }
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix('#')
            .and_then(|pointer| root.pointer(pointer))
            .unwrap_or(&Value::Null);
        return sample_at(target, root, depth + 1);
    }
    if let Some(first) = schema
        .get("const")
        .or_else(|| schema.get("enum").and_then(|e| e.get(0)))
    {
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema
            .get(key)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|s| s.get("type") != Some(&json!("null"))))
        {
            return sample_at(first, root, depth + 1);
        }
    }
    let kind = match schema.get("type") {
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("null"),
        Some(Value::String(k)) => k.as_str(),
        _ if schema.get("properties").is_some() => "object",
        _ => "object",
    };
    match kind {
        "string" => json!("mock"),
        "integer" | "number" => json!(1),
        "boolean" => json!(true),
        "null" => Value::Null,
        "array" => {
            let item = schema.get("items").unwrap_or(&Value::Null);
            json!([sample_at(item, root, depth + 1)])
        }
        _ => {
            let mut out = serde_json::Map::new();
            for (name, property) in schema
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                out.insert(name.clone(), sample_at(property, root, depth + 1));
            }
            Value::Object(out)
        }
    }
}

/// A tool call and its result that do not pair up, as the block-structured APIs (Anthropic,
/// Bedrock Converse) refuse them: every call of an assistant message is answered in the very
/// next message, and every result answers a call of the message just before.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unpaired {
    /// Message `index` has calls with these ids that the next message does not answer.
    Unanswered { index: usize, ids: Vec<String> },
    /// Message `index` has results with these ids answering no call of the message before.
    Unexpected { index: usize, ids: Vec<String> },
}

/// The first [`Unpaired`] of `messages`, given how a message's call ids and result ids are read.
pub(crate) fn unpaired(
    messages: &[serde_json::Value],
    calls: impl Fn(&serde_json::Value) -> Vec<String>,
    results: impl Fn(&serde_json::Value) -> Vec<String>,
) -> Option<Unpaired> {
    let mut previous: Vec<String> = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let answered = results(message);
        let missing: Vec<String> = previous
            .iter()
            .filter(|id| !answered.contains(id))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Some(Unpaired::Unanswered {
                index: index - 1,
                ids: missing,
            });
        }
        let extra: Vec<String> = answered
            .into_iter()
            .filter(|id| !previous.contains(id))
            .collect();
        if !extra.is_empty() {
            return Some(Unpaired::Unexpected { index, ids: extra });
        }
        previous = calls(message);
    }
    (!previous.is_empty()).then(|| Unpaired::Unanswered {
        index: messages.len() - 1,
        ids: previous,
    })
}

/// What `select` reads from each block of `message.content` (e.g. the id of each tool call).
pub(crate) fn block_ids(
    message: &serde_json::Value,
    select: impl Fn(&serde_json::Value) -> Option<String>,
) -> Vec<String> {
    message
        .get("content")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(select)
        .collect()
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A unique id: `prefix` and 24 digits.
pub(crate) fn next_id(prefix: &str) -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{n:024}")
}

/// Whitespace-separated words of `text`.
pub(crate) fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Words of every string found under `value` (for content blocks of any shape: text, tool
/// results, nested parts). Object keys that are not text (ids, names, types, urls, data) do not
/// count.
pub(crate) fn words_in(value: &serde_json::Value) -> u64 {
    use serde_json::Value;
    match value {
        Value::String(s) => count_words(s),
        Value::Array(items) => items.iter().map(words_in).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| {
                matches!(
                    k.as_str(),
                    "text"
                        | "content"
                        | "parts"
                        | "output"
                        | "result"
                        | "response"
                        | "toolResult"
                        | "functionResponse"
                        | "json"
                )
            })
            .map(|(_, v)| words_in(v))
            .sum(),
        _ => 0,
    }
}

/// Concatenated `text` fields of a content value (a string or an array of blocks/parts).
pub(crate) fn text_of(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_rejoin_to_the_json() {
        let pieces = split_in_three(r#"{"location":"Paris"}"#);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), r#"{"location":"Paris"}"#);
        assert_eq!(split_in_three("{}"), ["{", "}"]);
    }

    #[test]
    fn weather_prompt_calls_the_declared_tool_once() {
        let b = Behaviour::normal();
        let mut prompt = Prompt {
            words: 4,
            tools: vec!["lookup".into(), "get_weather".into()],
            last_user_text: "What's the Weather in Paris?".into(),
            ..Prompt::default()
        };
        let a = Answer::plan(&b, "m", &prompt, "call_");
        assert_eq!(a.finish, Finish::ToolUse);
        assert_eq!(a.tool_calls.len(), 1);
        let call = &a.tool_calls[0];
        assert_eq!(call.name, "get_weather");
        assert!(call.id.starts_with("call_"));
        prompt.ends_with_tool_result = true;
        let a = Answer::plan(&b, "m", &prompt, "call_");
        assert_eq!(a.finish, Finish::Stop);
        assert_eq!(a.text(), "This is m mock speaking.");
    }

    #[test]
    fn naming_several_tools_calls_each_unless_parallel_calls_are_off() {
        let b = Behaviour::normal();
        let schema =
            serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let mut prompt = Prompt {
            tools: vec!["get_weather".into(), "get_time".into(), "lookup".into()],
            tool_schemas: vec![
                ("get_weather".into(), schema.clone()),
                ("get_time".into(), schema),
            ],
            last_user_text: "Use get_time and get_weather for Paris.".into(),
            ..Prompt::default()
        };
        let a = Answer::plan(&b, "m", &prompt, "call_");
        assert_eq!(a.finish, Finish::ToolUse);
        let names: Vec<&str> = a.tool_calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "get_time"], "declaration order");
        assert_eq!(
            a.tool_calls[0].arguments,
            serde_json::json!({"city": "mock"})
        );
        assert_ne!(a.tool_calls[0].id, a.tool_calls[1].id);
        let pieces: usize = a.tool_calls.iter().map(|c| c.pieces.len()).sum();
        assert_eq!(a.output_tokens, pieces as u64);
        prompt.single_call = true;
        let a = Answer::plan(&b, "m", &prompt, "call_");
        assert_eq!(a.tool_calls.len(), 1);
        // One tool named is not a parallel call, and a name inside a longer word does not count.
        prompt.single_call = false;
        prompt.last_user_text = "Use get_time and get_timeout".into();
        let a = Answer::plan(&b, "m", &prompt, "call_");
        assert!(a.tool_calls.is_empty());
    }

    #[test]
    fn calls_and_results_pair_up() {
        use serde_json::json;
        let calls = |m: &serde_json::Value| {
            m["calls"].as_array().map_or(Vec::new(), |a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
        };
        let results = |m: &serde_json::Value| {
            m["results"].as_array().map_or(Vec::new(), |a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
        };
        let ok = [
            json!({}),
            json!({"calls": ["a", "b"]}),
            json!({"results": ["b", "a"]}),
            json!({}),
        ];
        assert_eq!(unpaired(&ok, calls, results), None);
        let half = [json!({"calls": ["a", "b"]}), json!({"results": ["a"]})];
        assert_eq!(
            unpaired(&half, calls, results),
            Some(Unpaired::Unanswered {
                index: 0,
                ids: vec!["b".into()]
            })
        );
        let split = [
            json!({"calls": ["a", "b"]}),
            json!({"results": ["a"]}),
            json!({"results": ["b"]}),
        ];
        assert!(matches!(
            unpaired(&split, calls, results),
            Some(Unpaired::Unanswered { index: 0, .. })
        ));
        let stray = [json!({}), json!({"results": ["z"]})];
        assert_eq!(
            unpaired(&stray, calls, results),
            Some(Unpaired::Unexpected {
                index: 1,
                ids: vec!["z".into()]
            })
        );
        let last = [json!({"calls": ["a"]})];
        assert!(matches!(
            unpaired(&last, calls, results),
            Some(Unpaired::Unanswered { index: 0, .. })
        ));
    }

    #[test]
    fn behaviour_calls_come_in_order() {
        let b = Behaviour::tool_calls(vec![
            ToolCall::new("a", serde_json::json!({"x": 1})),
            ToolCall::new("b", serde_json::json!({})),
        ]);
        let prompt = Prompt {
            tools: vec!["a".into(), "b".into()],
            ..Prompt::default()
        };
        let a = Answer::plan(&b, "m", &prompt, "toolu_");
        let names: Vec<&str> = a.tool_calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(a.tool_calls[0].arguments_json, r#"{"x":1}"#);
    }
}
