//! Just enough of the protobuf wire format to write an OTLP `ExportTraceServiceRequest`
//! (`opentelemetry/proto/collector/trace/v1/trace_service.proto` and the `trace`, `resource`,
//! `common` messages it holds). Only the fields Gatehouse sets are written; the field numbers
//! are the OTLP ones, listed next to each writer.
//!
//! Messages are written into a scratch buffer and then length-prefixed into their parent (one
//! copy per nesting level); this runs on the exporter's task, off the request path.

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// An encoder writing into a byte buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    /// A `bytes` or `string` field (proto3: empty is the default and is not written).
    pub fn bytes(&mut self, field: u32, value: &[u8]) {
        if value.is_empty() {
            return;
        }
        self.key(field, LEN);
        self.varint(value.len() as u64);
        self.buf.extend_from_slice(value);
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, value: &str) {
        self.bytes(field, value.as_bytes());
    }

    /// A varint field (`int64`, `uint32`, enums); zero is not written.
    pub fn uint(&mut self, field: u32, value: u64) {
        if value == 0 {
            return;
        }
        self.key(field, VARINT);
        self.varint(value);
    }

    /// A `fixed64` field.
    pub fn fixed64(&mut self, field: u32, value: u64) {
        self.key(field, FIXED64);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// A `fixed32` field.
    pub fn fixed32(&mut self, field: u32, value: u32) {
        self.key(field, FIXED32);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    /// A `double` field (always written: a oneof member must be present even when zero).
    pub fn double(&mut self, field: u32, value: f64) {
        self.key(field, FIXED64);
        self.buf.extend_from_slice(&value.to_bits().to_le_bytes());
    }

    /// An embedded message, written by `f` (always written, even when empty: presence matters
    /// for oneof members and `optional` messages).
    pub fn message(&mut self, field: u32, f: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::new();
        f(&mut inner);
        self.key(field, LEN);
        self.varint(inner.buf.len() as u64);
        self.buf.extend_from_slice(&inner.buf);
    }
}

/// An attribute value (`opentelemetry.proto.common.v1.AnyValue`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `string_value = 1`.
    Str(&'a str),
    /// `string_value = 1`, owned.
    String(String),
    /// `bool_value = 2`.
    Bool(bool),
    /// `int_value = 3`.
    Int(i64),
    /// `double_value = 4`.
    Double(f64),
    /// `array_value = 5` of strings.
    StrArray(Vec<&'a str>),
}

/// `KeyValue { string key = 1; AnyValue value = 2; }`.
pub fn key_value(w: &mut Writer, field: u32, key: &str, value: &Value<'_>) {
    w.message(field, |kv| {
        kv.string(1, key);
        kv.message(2, |v| any_value(v, value));
    });
}

fn any_value(w: &mut Writer, value: &Value<'_>) {
    match value {
        Value::String(s) => any_value(w, &Value::Str(s)),
        Value::Str(s) => {
            // A oneof member is written even when empty.
            w.key(1, LEN);
            w.varint(s.len() as u64);
            w.buf.extend_from_slice(s.as_bytes());
        }
        Value::Bool(b) => {
            w.key(2, VARINT);
            w.varint(u64::from(*b));
        }
        Value::Int(i) => {
            w.key(3, VARINT);
            w.varint(*i as u64);
        }
        Value::Double(d) => w.double(4, *d),
        // ArrayValue { repeated AnyValue values = 1; }
        Value::StrArray(items) => w.message(5, |a| {
            for item in items {
                a.message(1, |v| any_value(v, &Value::Str(item)));
            }
        }),
    }
}

/// `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `SPAN_KIND_SERVER = 2`: the request as the sidecar received it.
    Server = 2,
    /// `SPAN_KIND_CLIENT = 3`: a call to a provider.
    Client = 3,
}

/// One span, borrowed from the record it describes.
#[derive(Debug)]
pub struct Span<'a> {
    /// `bytes trace_id = 1` (16 bytes).
    pub trace_id: [u8; 16],
    /// `bytes span_id = 2` (8 bytes).
    pub span_id: [u8; 8],
    /// `bytes parent_span_id = 4`; `None` for a root span.
    pub parent: Option<[u8; 8]>,
    /// `string name = 5`.
    pub name: String,
    /// `SpanKind kind = 6`.
    pub kind: Kind,
    /// `fixed64 start_time_unix_nano = 7`.
    pub start_ns: u64,
    /// `fixed64 end_time_unix_nano = 8`.
    pub end_ns: u64,
    /// `repeated KeyValue attributes = 9`.
    pub attributes: Vec<(&'static str, Value<'a>)>,
    /// `Status status = 15`: `Some(message)` is `STATUS_CODE_ERROR = 2` with that message,
    /// `None` leaves the status unset.
    pub error: Option<&'a str>,
    /// `fixed32 flags = 16`: the W3C trace flags in the low byte, plus
    /// `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK` (0x100) and, when the parent is remote,
    /// `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK` (0x200).
    pub flags: u32,
}

/// `Span`'s fields into `w`.
fn span(w: &mut Writer, s: &Span<'_>) {
    w.bytes(1, &s.trace_id);
    w.bytes(2, &s.span_id);
    if let Some(parent) = &s.parent {
        w.bytes(4, parent);
    }
    w.string(5, &s.name);
    w.uint(6, s.kind as u64);
    w.fixed64(7, s.start_ns);
    w.fixed64(8, s.end_ns);
    for (key, value) in &s.attributes {
        key_value(w, 9, key, value);
    }
    if let Some(message) = s.error {
        // Status { string message = 2; StatusCode code = 3; }
        w.message(15, |st| {
            st.string(2, message);
            st.uint(3, 2);
        });
    }
    w.fixed32(16, s.flags);
}

/// An `ExportTraceServiceRequest` of one resource (`resource_spans = 1`), one scope and `spans`.
///
/// `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }`,
/// `Resource { repeated KeyValue attributes = 1; }`,
/// `ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }`,
/// `InstrumentationScope { string name = 1; string version = 2; }`.
pub fn export_request(
    resource: &[(&'static str, String)],
    scope: (&str, &str),
    spans: &[Span<'_>],
) -> Vec<u8> {
    let mut w = Writer::new();
    w.message(1, |rs| {
        rs.message(1, |r| {
            for (key, value) in resource {
                key_value(r, 1, key, &Value::Str(value));
            }
        });
        rs.message(2, |ss| {
            ss.message(1, |sc| {
                sc.string(1, scope.0);
                sc.string(2, scope.1);
            });
            for s in spans {
                ss.message(2, |sp| span(sp, s));
            }
        });
    });
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_keys_follow_the_wire_format() {
        let mut w = Writer::new();
        w.uint(1, 150);
        // field 1, varint: key 0x08, then 150 = 0x96 0x01 (the protobuf docs' example).
        assert_eq!(w.into_bytes(), [0x08, 0x96, 0x01]);
        let mut w = Writer::new();
        w.string(2, "testing");
        assert_eq!(
            w.into_bytes(),
            [0x12, 0x07, b't', b'e', b's', b't', b'i', b'n', b'g']
        );
        let mut w = Writer::new();
        w.fixed64(7, 1);
        assert_eq!(w.into_bytes(), [0x39, 1, 0, 0, 0, 0, 0, 0, 0]);
        // Negative int64 values take ten bytes (two's complement as u64).
        let mut w = Writer::new();
        key_value(&mut w, 9, "k", &Value::Int(-1));
        let bytes = w.into_bytes();
        assert_eq!(bytes.len(), 2 + 3 + 2 + 11);
    }

    #[test]
    fn zero_defaults_are_omitted_but_oneof_members_are_not() {
        let mut w = Writer::new();
        w.uint(3, 0);
        w.bytes(4, b"");
        assert!(w.into_bytes().is_empty());
        let mut w = Writer::new();
        key_value(&mut w, 1, "k", &Value::Str(""));
        // KeyValue{key="k", value=AnyValue{string_value=""}}
        assert_eq!(
            w.into_bytes(),
            [0x0a, 0x07, 0x0a, 0x01, b'k', 0x12, 0x02, 0x0a, 0x00]
        );
    }
}
