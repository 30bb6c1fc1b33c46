//! What the mock does with a request: the knobs a test turns.
//!
//! A [`Behaviour`] combines timing knobs (latency, per-chunk delay), shape knobs (number of
//! content chunks, fixed content, cached/reasoning token counts) and at most one [`Fault`].
//! It is plain data so the control API can accept it as JSON:
//!
//! ```json
//! {"fault": {"kind": "status", "status": 429, "retry_after_secs": 2}, "latency_ms": 50}
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Default number of content chunks in a streamed answer (and words in a non-streamed one).
pub const DEFAULT_CHUNKS: usize = 5;

/// How the mock answers one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// What goes wrong, if anything. [`Fault::None`] answers normally.
    pub fault: Fault,
    /// Delay before the response headers are sent (time to first byte).
    #[serde(rename = "latency_ms", with = "millis")]
    pub latency: Duration,
    /// Delay before each streamed content chunk (and the final chunks).
    #[serde(rename = "chunk_delay_ms", with = "millis")]
    pub chunk_delay: Duration,
    /// Number of content chunks in a stream; each carries one word. The non-streamed answer has
    /// the same words, so its `completion_tokens` is this number too.
    pub chunks: usize,
    /// Fixed answer text instead of the built-in sentence; split on whitespace into chunks
    /// (then `chunks` is ignored).
    pub content: Option<String>,
    /// The answer's stream chunks exactly, no space added between them (wins over `content`
    /// and `chunks`): a value split anywhere across events. The whole answer is their
    /// concatenation.
    pub pieces: Option<Vec<String>>,
    /// Reported `usage.prompt_tokens_details.cached_tokens` (capped at `prompt_tokens`).
    pub cached_tokens: u64,
    /// Reported `usage.completion_tokens_details.reasoning_tokens` (added to `completion_tokens`;
    /// Gemini: `thoughtsTokenCount`, apart from `candidatesTokenCount`; Anthropic and Bedrock
    /// count thinking inside their output tokens).
    pub reasoning_tokens: u64,
    /// Reported prompt tokens written to the cache: Anthropic `cache_creation_input_tokens`,
    /// Bedrock `cacheWriteInputTokens` (capped at the prompt tokens not read from the cache).
    /// OpenAI-wire flavours and Gemini do not report cache writes.
    pub cache_write_tokens: u64,
    /// Answer with this tool call (whatever the request says, unless its last message is a tool
    /// result). Without it the mock calls a declared tool on its own when the last user message
    /// mentions "weather" (see [`ToolCall::auto`]).
    pub tool_call: Option<ToolCall>,
    /// Answer with these tool calls, in order (parallel calls; takes precedence over
    /// `tool_call`). A request that allows one call only (`parallel_tool_calls: false`,
    /// `disable_parallel_tool_use`) gets the first.
    pub tool_calls: Vec<ToolCall>,
    /// Holds a stream after its first content chunk until the test releases it.
    #[serde(skip)]
    pub gate: Option<StreamGate>,
}

/// A tool call the mock answers with, in each flavour's shape (OpenAI `tool_calls`, Anthropic
/// `tool_use`, Gemini `functionCall`, Bedrock `toolUse`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// The function (tool) name.
    pub name: String,
    /// The arguments as a JSON object.
    #[serde(default = "empty_object")]
    pub arguments: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl ToolCall {
    /// A call of `name` with `arguments`.
    pub fn new(name: impl Into<String>, arguments: serde_json::Value) -> Self {
        Self {
            name: name.into(),
            arguments,
        }
    }

    /// The call the mock makes by itself for a prompt that asks about the weather: the first
    /// declared tool whose name contains "weather" (else the first declared tool) with
    /// `{"location": "Paris"}`.
    pub fn auto(declared: &[String]) -> Option<Self> {
        let name = declared
            .iter()
            .find(|n| n.contains("weather"))
            .or_else(|| declared.first())?;
        Some(Self::new(
            name.clone(),
            serde_json::json!({"location": "Paris"}),
        ))
    }
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            fault: Fault::None,
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            chunks: DEFAULT_CHUNKS,
            content: None,
            pieces: None,
            cached_tokens: 0,
            reasoning_tokens: 0,
            cache_write_tokens: 0,
            tool_call: None,
            tool_calls: Vec::new(),
            gate: None,
        }
    }
}

impl Behaviour {
    /// A normal, successful answer.
    pub fn normal() -> Self {
        Self::default()
    }

    /// Answer with `status` and OpenAI's error body for that status (see [`Fault::Status`]).
    pub fn status(status: u16) -> Self {
        Self::default().with_fault(Fault::status(status))
    }

    /// 429 in the flavour's shape, saying to wait `retry_after_secs` where the provider can (see
    /// [`retry_after`](Self::retry_after)).
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::status(429).retry_after(retry_after_secs)
    }

    /// Send the headers, the role chunk and `chunks` content chunks, then abort the connection
    /// without the final chunks or `data: [DONE]`.
    pub fn cut_after(chunks: usize) -> Self {
        Self::default().with_fault(Fault::CutAfter { chunks })
    }

    /// Like [`cut_after`](Self::cut_after), but the cut falls inside the next event (SSE) or
    /// frame (AWS event stream): its first half is sent, then the connection is aborted.
    pub fn cut_inside(chunks: usize) -> Self {
        Self::default().with_fault(Fault::CutInside {
            chunks,
            clean_end: false,
        })
    }

    /// Like [`cut_inside`](Self::cut_inside), but the body then ends normally, as from a proxy
    /// that cuts a response yet closes it properly: only the framing shows the truncation.
    pub fn truncated(chunks: usize) -> Self {
        Self::default().with_fault(Fault::CutInside {
            chunks,
            clean_end: true,
        })
    }

    /// Send the headers and `chunks` content chunks, then the provider's in-stream error event
    /// for `status` (OpenAI `data: {"error": …}`, Anthropic `event: error`, Gemini an error
    /// object, Bedrock an exception frame) and end the stream cleanly. A non-streamed request
    /// gets the plain `status` error.
    pub fn stream_error(chunks: usize, status: u16) -> Self {
        Self::default().with_fault(Fault::StreamError { chunks, status })
    }

    /// Answer with a call of tool `name` with `arguments` (a JSON object).
    pub fn tool_call(name: impl Into<String>, arguments: serde_json::Value) -> Self {
        Self {
            tool_call: Some(ToolCall::new(name, arguments)),
            ..Self::default()
        }
    }

    /// Answer with `calls`, in order (parallel tool calls).
    pub fn tool_calls(calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            ..Self::default()
        }
    }

    /// Send `chunks` content chunks of a stream, then nothing more, the connection left open.
    pub fn stall_after(chunks: usize) -> Self {
        Self::default().with_fault(Fault::StallAfter { chunks })
    }

    /// Never answer; the request stays open until the client gives up or the mock stops.
    pub fn hang() -> Self {
        Self::default().with_fault(Fault::Hang)
    }

    /// 200 with a body that is not valid JSON (or, for a stream, SSE events that are not JSON).
    pub fn garbage() -> Self {
        Self::default().with_fault(Fault::Garbage)
    }

    /// 200 with `content-type: text/html` and an HTML page, like a misconfigured proxy.
    pub fn wrong_content_type() -> Self {
        Self::default().with_fault(Fault::WrongContentType)
    }

    /// Close the connection without writing any response.
    pub fn drop_connection() -> Self {
        Self::default().with_fault(Fault::DropConnection)
    }

    /// Replace the fault.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    /// Delay before the response headers.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Delay before each streamed chunk after the role chunk.
    pub fn chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    /// Number of content chunks (words).
    pub fn chunks(mut self, chunks: usize) -> Self {
        self.chunks = chunks;
        self
    }

    /// Fixed answer text.
    pub fn content(mut self, content: impl Into<String>) -> Self {
        self.content = Some(content.into());
        self
    }

    /// Stream chunks exactly these texts (see [`Behaviour::pieces`]).
    pub fn pieces<S: Into<String>>(mut self, pieces: impl IntoIterator<Item = S>) -> Self {
        self.pieces = Some(pieces.into_iter().map(Into::into).collect());
        self
    }

    /// Reported cached prompt tokens.
    pub fn cached_tokens(mut self, tokens: u64) -> Self {
        self.cached_tokens = tokens;
        self
    }

    /// Reported reasoning tokens.
    pub fn reasoning_tokens(mut self, tokens: u64) -> Self {
        self.reasoning_tokens = tokens;
        self
    }

    /// Reported cache-write tokens (Anthropic, Bedrock).
    pub fn cache_write_tokens(mut self, tokens: u64) -> Self {
        self.cache_write_tokens = tokens;
        self
    }

    /// Hold streams at `gate` after the first content chunk.
    pub fn gate(mut self, gate: StreamGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Say how long to wait on a [`Fault::Status`], the way the flavour's provider does: the
    /// `retry-after` header (OpenAI, Azure OpenAI, Anthropic) or a `google.rpc.RetryInfo` in the
    /// error body (Gemini). Bedrock has no such field and sends nothing. No effect on other
    /// faults.
    pub fn retry_after(mut self, secs: u64) -> Self {
        if let Fault::Status {
            retry_after_secs, ..
        } = &mut self.fault
        {
            *retry_after_secs = Some(secs);
        }
        self
    }

    /// Override the error `message` of a [`Fault::Status`]; no effect on other faults.
    pub fn error_message(mut self, text: impl Into<String>) -> Self {
        if let Fault::Status { message, .. } = &mut self.fault {
            *message = Some(text.into());
        }
        self
    }
}

/// The one thing that goes wrong with a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Answer normally.
    #[default]
    None,
    /// Answer `status` with the error body of the request's flavour (OpenAI, Azure, Anthropic,
    /// Gemini, Bedrock; see each module). `type` overrides the flavour's error type (Anthropic
    /// `error.type`, Gemini `error.status`, Bedrock `x-amzn-errortype`). For OpenAI, unset
    /// fields take OpenAI's values for the status: 400 `invalid_request_error`; 401 `invalid_request_error`/`invalid_api_key`;
    /// 403 `permission_denied`; 404 `model_not_found`; 429 `requests`/`rate_limit_exceeded`;
    /// 500 `server_error`; 503 `server_error` (overloaded); others `server_error` or
    /// `invalid_request_error` by class.
    Status {
        /// HTTP status code.
        status: u16,
        /// `error.message`.
        #[serde(default)]
        message: Option<String>,
        /// `error.type`.
        #[serde(default, rename = "type")]
        error_type: Option<String>,
        /// `error.code`.
        #[serde(default)]
        code: Option<String>,
        /// `error.param`.
        #[serde(default)]
        param: Option<String>,
        /// How long to wait, in seconds, said as the provider says it (see
        /// [`Behaviour::retry_after`]).
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// Abort the connection after the role chunk and `chunks` content chunks. A non-streamed
    /// answer is aborted halfway through its body.
    CutAfter {
        /// Content chunks sent before the cut.
        chunks: usize,
    },
    /// Send the role chunk, `chunks` content chunks and the first half of the next one, then abort
    /// the connection (or, with `clean_end`, end the body normally). The half is of the next
    /// content chunk, or of the last one when there are no more. A non-streamed answer gets half
    /// its body.
    CutInside {
        /// Whole content chunks sent before the cut.
        chunks: usize,
        /// End the body normally after the half event instead of aborting the connection.
        #[serde(default)]
        clean_end: bool,
    },
    /// Send `chunks` content chunks, then the flavour's in-stream error for `status`.
    StreamError {
        /// Content chunks sent before the error.
        chunks: usize,
        /// The status whose error type the event carries (e.g. 529/503 overloaded, 500).
        #[serde(default = "default_stream_error_status")]
        status: u16,
    },
    /// Send the role chunk and `chunks` content chunks, then go silent with the connection open:
    /// a stream that stalls mid-answer. A non-streamed answer is sent whole.
    StallAfter {
        /// Content chunks sent before the stall.
        chunks: usize,
    },
    /// Never answer.
    Hang,
    /// 200 with an unparseable body.
    Garbage,
    /// 200 with `text/html`.
    WrongContentType,
    /// Close the connection without a response.
    DropConnection,
}

fn default_stream_error_status() -> u16 {
    500
}

/// How a cutting fault ends a stream of content chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamCut {
    /// Content chunks sent (the last one only half when `half_last`).
    pub(crate) chunks: usize,
    /// The last event sent goes out half.
    pub(crate) half_last: bool,
    /// Abort the connection after it instead of ending the body.
    pub(crate) abort: bool,
    /// Keep the connection open, silent, after it (neither end nor abort).
    pub(crate) stall: bool,
}

impl Fault {
    /// The cut this fault makes in a stream of `total` content chunks; `None` for faults that
    /// do not cut streams.
    pub(crate) fn stream_cut(&self, total: usize) -> Option<StreamCut> {
        match *self {
            Fault::CutAfter { chunks } => Some(StreamCut {
                chunks: chunks.min(total),
                half_last: false,
                abort: true,
                stall: false,
            }),
            Fault::StallAfter { chunks } => Some(StreamCut {
                chunks: chunks.min(total),
                half_last: false,
                abort: false,
                stall: true,
            }),
            Fault::CutInside { chunks, clean_end } => Some(StreamCut {
                chunks: (chunks + 1).min(total),
                half_last: true,
                abort: !clean_end,
                stall: false,
            }),
            _ => None,
        }
    }

    /// [`Fault::Status`] with OpenAI's defaults for `status`.
    pub fn status(status: u16) -> Self {
        Fault::Status {
            status,
            message: None,
            error_type: None,
            code: None,
            param: None,
            retry_after_secs: None,
        }
    }
}

/// Holds a stream after its first content chunk until the test lets it go, so a test can check
/// that the client saw chunk 1 before the mock sent chunk 2.
///
/// Every event after the first content chunk (further content chunks, the finish chunk, the
/// usage chunk and `data: [DONE]`) takes one permit: [`StreamGate::release`] hands out permits,
/// [`StreamGate::open`] lets everything through for good. Clones share the gate.
#[derive(Clone)]
pub struct StreamGate {
    permits: Arc<Semaphore>,
}

impl StreamGate {
    /// A closed gate.
    pub fn new() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(0)),
        }
    }

    /// Let `events` more events through.
    pub fn release(&self, events: usize) {
        self.permits.add_permits(events);
    }

    /// Let every remaining event through, now and later.
    pub fn open(&self) {
        // A closed semaphore fails every acquire at once, which `pass` reads as "open".
        self.permits.close();
    }

    pub(crate) async fn pass(&self) {
        if let Ok(permit) = self.permits.acquire().await {
            permit.forget();
        }
    }
}

impl Default for StreamGate {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for StreamGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamGate")
            .field("permits", &self.permits.available_permits())
            .field("open", &self.permits.is_closed())
            .finish()
    }
}

impl PartialEq for StreamGate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.permits, &other.permits)
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
