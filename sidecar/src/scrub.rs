//! Keeps the credentials the sidecar sends to a provider out of everything it relays back.
//!
//! Upstreams do echo what they received: a self-hosted server or a proxy in front of one may
//! answer a 400/404/422, or a stream's error event, with the request headers it got. Whatever such
//! an answer carries reaches the client, the app the keys are kept from. So every relayed upstream
//! body, the one upstream header relayed (a refusal's `Content-Type`) and every stream event is
//! scrubbed of the serving provider's credentials, in every form they were sent:
//!
//! - the key itself, which also covers `Bearer <key>` (OpenAI, openaiCompatible), and the values of
//!   `api-key` (Azure OpenAI), `x-api-key` (Anthropic) and `x-goog-api-key` (Gemini);
//! - Bedrock's SigV4 parts: the access key id, the secret access key (never sent, scrubbed anyway),
//!   the session token (`x-amz-security-token`) and, per request, the signature of the
//!   `Authorization` header ([`Scrubber::for_request`]);
//! - each of them with `/` written `\/`, as some JSON encoders do.
//!
//! **Fragments.** Servers and proxies also echo part of a value (truncated logs, "key abcd… is
//! invalid"). Any run of at least [`FRAGMENT_BYTES`] consecutive bytes of a secret is scrubbed,
//! wherever it appears: credentials are random, so 16 bytes of one never occur by chance, and a
//! shorter leftover (OpenAI's own `sk-…abcd` hint shows 4) does not help guess the rest. A secret
//! of [`FRAGMENT_BYTES`] bytes or fewer is scrubbed only whole.
//!
//! **Placeholders.** Values shorter than [`MIN_SECRET_BYTES`] are not scrubbed: they are the
//! placeholders local servers accept (`EMPTY` for vLLM, `ollama` for Ollama), and replacing them
//! would garble ordinary words in answers. No real credential is that short.
//!
//! Every match becomes `[redacted]`. The matcher is built once per provider when a config snapshot
//! is built: Aho-Corasick over the secrets' aligned 8-byte blocks (a run of 16 bytes of a secret
//! always holds one whole block), each hit extended both ways against the secret and kept if the
//! run reaches [`FRAGMENT_BYTES`]. Few short patterns keep the search fast; scrubbing a body with
//! no match is one pass over it and copies nothing.

use std::borrow::Cow;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;
use http::HeaderMap;
use memchr::memmem;

use crate::state::Credentials;

/// What a scrubbed secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Secrets shorter than this are placeholders, not credentials, and are not scrubbed.
pub const MIN_SECRET_BYTES: usize = 8;

/// Any run of this many consecutive bytes of a secret is scrubbed, not just the whole secret.
pub const FRAGMENT_BYTES: usize = 16;

/// Why a scrubber could not be built.
#[derive(Debug, thiserror::Error)]
#[error("failed to build the credential scrubber: {0}")]
pub struct BuildError(#[from] aho_corasick::BuildError);

/// Length of the blocks searched for: half a fragment, so every fragment holds a whole block.
const BLOCK_BYTES: usize = FRAGMENT_BYTES / 2;

/// The searchers and what each of their patterns stands for.
struct Needles {
    /// Whether any block occurs at all: the common case is "no", and this answers it at memchr
    /// speed (leftmost semantics let Aho-Corasick use its SIMD prefilter).
    quick: AhoCorasick,
    /// Every occurrence of every block, overlapping (standard semantics), for the rare input
    /// that has one.
    search: AhoCorasick,
    /// By pattern id: the secret form it comes from and where in it it starts; `None` for a
    /// short secret searched whole.
    origin: Vec<(usize, Option<usize>)>,
    /// Each secret in each form it may be written in.
    forms: Vec<Vec<u8>>,
}

/// Finds and replaces one provider's credentials. Cheap to clone.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Secrets and how to find them; `None` when the provider sends no credentials.
    needles: Option<Arc<Needles>>,
    /// One request's own secret (a SigV4 signature), matched whole.
    request: Option<Arc<memmem::Finder<'static>>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the needles: they are the secrets.
        f.debug_struct("Scrubber")
            .field("secrets", &self.needles.as_ref().map(|n| n.forms.len()))
            .field("request_secret", &self.request.is_some())
            .finish()
    }
}

impl Scrubber {
    /// A scrubber for `secrets` (values shorter than [`MIN_SECRET_BYTES`] are ignored).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Result<Self, BuildError> {
        let mut forms: Vec<Vec<u8>> = Vec::new();
        for secret in secrets {
            let secret = secret.trim();
            if secret.len() < MIN_SECRET_BYTES {
                continue;
            }
            forms.push(secret.as_bytes().to_vec());
            if secret.contains('/') {
                forms.push(secret.replace('/', "\\/").into_bytes());
            }
        }
        forms.sort_unstable();
        forms.dedup();
        if forms.is_empty() {
            return Ok(Self::default());
        }
        let mut patterns: Vec<&[u8]> = Vec::new();
        let mut origin = Vec::new();
        for (i, form) in forms.iter().enumerate() {
            if form.len() <= FRAGMENT_BYTES {
                patterns.push(form);
                origin.push((i, None));
            } else {
                for offset in (0..=form.len() - BLOCK_BYTES).step_by(BLOCK_BYTES) {
                    patterns.push(&form[offset..offset + BLOCK_BYTES]);
                    origin.push((i, Some(offset)));
                }
            }
        }
        let quick = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&patterns)?;
        // Standard semantics, searched overlapping: every block that occurs is seen, whatever
        // else overlaps it.
        let search = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&patterns)?;
        Ok(Self {
            needles: Some(Arc::new(Needles {
                quick,
                search,
                origin,
                forms,
            })),
            request: None,
        })
    }

    /// The scrubber for what a provider with `credentials` and the secret header values
    /// `extra` (`spec.headers[].valueFrom`) is sent.
    pub fn for_provider<'a>(
        credentials: &'a Credentials,
        extra: &[&'a str],
    ) -> Result<Self, BuildError> {
        if extra.is_empty() {
            return Self::for_credentials(credentials);
        }
        match credentials {
            Credentials::None | Credentials::Invalid(_) => Self::new(extra.iter().copied()),
            Credentials::Header(_, value) => {
                let value = value.to_str().unwrap_or_default();
                let key = value.strip_prefix("Bearer ").unwrap_or(value);
                Self::new(std::iter::once(key).chain(extra.iter().copied()))
            }
            Credentials::Aws(aws) => Self::new(
                [aws.access_key_id(), aws.secret_access_key()]
                    .into_iter()
                    .chain(aws.session_token())
                    .chain(extra.iter().copied()),
            ),
        }
    }

    /// The scrubber for what a provider with `credentials` is sent.
    pub fn for_credentials(credentials: &Credentials) -> Result<Self, BuildError> {
        match credentials {
            Credentials::None | Credentials::Invalid(_) => Ok(Self::default()),
            Credentials::Header(_, value) => {
                let value = value.to_str().unwrap_or_default();
                let key = value.strip_prefix("Bearer ").unwrap_or(value);
                Self::new([key])
            }
            Credentials::Aws(aws) => Self::new(
                [aws.access_key_id(), aws.secret_access_key()]
                    .into_iter()
                    .chain(aws.session_token()),
            ),
        }
    }

    /// This scrubber, plus the secret only one request carries: the signature of a SigV4
    /// `Authorization` header in `headers`, if there is one.
    pub fn for_request(&self, headers: &HeaderMap) -> Self {
        let signature = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.starts_with("AWS4-"))
            .and_then(|v| v.split_once("Signature="))
            .map(|(_, s)| s.split(',').next().unwrap_or(s).trim())
            .filter(|s| s.len() >= MIN_SECRET_BYTES);
        match signature {
            Some(s) => Self {
                needles: self.needles.clone(),
                request: Some(Arc::new(memmem::Finder::new(s.as_bytes()).into_owned())),
            },
            None => self.clone(),
        }
    }

    /// Whether there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.needles.is_none() && self.request.is_none()
    }

    /// Whether `bytes` carries a secret (or a fragment of one).
    pub fn contains(&self, bytes: &[u8]) -> bool {
        matches!(self.scrub(bytes), Cow::Owned(_))
    }

    /// `bytes` with every secret and fragment replaced by [`REDACTED`]; borrowed when there was
    /// none.
    pub fn scrub<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let mut spans: Vec<(usize, usize)> = Vec::new();
        if let Some(needles) = &self.needles
            && needles.quick.is_match(bytes)
        {
            for m in needles.search.find_overlapping_iter(bytes) {
                let Some(&(form, offset)) = needles.origin.get(m.pattern().as_usize()) else {
                    continue;
                };
                let Some(offset) = offset else {
                    spans.push((m.start(), m.end()));
                    continue;
                };
                // Extend the block to the whole run of the secret it sits in.
                let secret = &needles.forms[form];
                let before = bytes[..m.start()]
                    .iter()
                    .rev()
                    .zip(secret[..offset].iter().rev())
                    .take_while(|(a, b)| a == b)
                    .count();
                let after = bytes[m.end()..]
                    .iter()
                    .zip(&secret[offset + BLOCK_BYTES..])
                    .take_while(|(a, b)| a == b)
                    .count();
                if before + BLOCK_BYTES + after >= FRAGMENT_BYTES {
                    spans.push((m.start() - before, m.end() + after));
                }
            }
        }
        if let Some(finder) = &self.request {
            let len = finder.needle().len();
            spans.extend(finder.find_iter(bytes).map(|start| (start, start + len)));
        }
        if spans.is_empty() {
            return Cow::Borrowed(bytes);
        }
        spans.sort_unstable();
        let mut out = Vec::with_capacity(bytes.len());
        let mut copied = 0;
        let mut current: Option<(usize, usize)> = None;
        for (start, end) in spans {
            match &mut current {
                Some((_, cur_end)) if start <= *cur_end => *cur_end = (*cur_end).max(end),
                _ => {
                    if let Some((s, e)) = current.take() {
                        out.extend_from_slice(&bytes[copied..s]);
                        out.extend_from_slice(REDACTED.as_bytes());
                        copied = e;
                    }
                    current = Some((start, end));
                }
            }
        }
        if let Some((s, e)) = current {
            out.extend_from_slice(&bytes[copied..s]);
            out.extend_from_slice(REDACTED.as_bytes());
            copied = e;
        }
        out.extend_from_slice(&bytes[copied..]);
        Cow::Owned(out)
    }

    /// [`Self::scrub`] for a body: the same `Bytes` (no copy) when there was nothing to scrub.
    pub fn scrub_bytes(&self, bytes: Bytes) -> Bytes {
        if self.is_empty() {
            return bytes;
        }
        match self.scrub(&bytes) {
            Cow::Borrowed(_) => bytes,
            Cow::Owned(v) => Bytes::from(v),
        }
    }

    /// [`Self::scrub`] for text (a log line, an error message).
    pub fn scrub_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.scrub(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Replacements cut only at secret boundaries; lossy only if a secret was not UTF-8.
            Cow::Owned(v) => Cow::Owned(String::from_utf8_lossy(&v).into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-4fJ8qLz0Xr2NwVb7TyU1cKd9MhE3sPa6";

    fn scrub(s: &Scrubber, text: &str) -> String {
        s.scrub_str(text).into_owned()
    }

    #[test]
    fn whole_keys_and_header_forms_are_scrubbed() {
        let s = Scrubber::new([KEY]).unwrap();
        assert_eq!(
            scrub(&s, &format!("bad header Authorization: Bearer {KEY}.")),
            "bad header Authorization: Bearer [redacted]."
        );
        assert_eq!(
            scrub(&s, &format!(r#"{{"x-api-key":"{KEY}","k2":"{KEY}"}}"#)),
            r#"{"x-api-key":"[redacted]","k2":"[redacted]"}"#
        );
        assert_eq!(scrub(&s, "nothing here"), "nothing here");
        assert!(matches!(s.scrub(b"nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn fragments_of_sixteen_bytes_or_more_are_scrubbed_shorter_ones_kept() {
        let s = Scrubber::new([KEY]).unwrap();
        let prefix = &KEY[..20];
        let middle = &KEY[10..26];
        let short = &KEY[..FRAGMENT_BYTES - 1];
        assert_eq!(
            scrub(&s, &format!("key {prefix}... invalid")),
            "key [redacted]... invalid"
        );
        assert_eq!(scrub(&s, &format!("[{middle}]")), "[[redacted]]");
        assert_eq!(scrub(&s, &format!("key {short}")), format!("key {short}"));
        // OpenAI's own hint keeps 4 characters.
        let hint = format!("sk-proj-****{}", &KEY[KEY.len() - 4..]);
        assert_eq!(scrub(&s, &hint), hint);
    }

    #[test]
    fn placeholders_are_left_alone_and_escaped_slashes_are_caught() {
        let s = Scrubber::new(["EMPTY", "ollama"]).unwrap();
        assert!(s.is_empty());
        assert_eq!(scrub(&s, "EMPTY ollama"), "EMPTY ollama");
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let s = Scrubber::new([secret]).unwrap();
        let escaped = secret.replace('/', "\\/");
        assert_eq!(scrub(&s, &format!("\"{escaped}\"")), "\"[redacted]\"");
        assert_eq!(scrub(&s, secret), REDACTED);
    }

    #[test]
    fn credentials_of_every_kind_are_covered() {
        use gatehouse_crds::config::ProviderKind;
        for kind in [
            ProviderKind::Openai,
            ProviderKind::OpenaiCompatible,
            ProviderKind::AzureOpenAI,
            ProviderKind::Anthropic,
            ProviderKind::Gemini,
        ] {
            let s = Scrubber::for_credentials(&Credentials::for_key(kind, Some(KEY))).unwrap();
            assert_eq!(
                scrub(&s, &format!("got {KEY}")),
                "got [redacted]",
                "{kind:?}"
            );
        }
        let aws = Credentials::Aws(aws_credential_types::Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            Some("FwoGZXIvYXdzEBYaDHqa0AP1/session+token==".to_string()),
            None,
            "test",
        ));
        let s = Scrubber::for_credentials(&aws).unwrap();
        let text = "id AKIAIOSFODNN7EXAMPLE token FwoGZXIvYXdzEBYaDHqa0AP1/session+token==";
        assert_eq!(scrub(&s, text), "id [redacted] token [redacted]");

        let mut headers = HeaderMap::new();
        let signature = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        headers.insert(
            http::header::AUTHORIZATION,
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}"
            )
            .parse()
            .unwrap(),
        );
        let per_request = s.for_request(&headers);
        let echoed = headers[http::header::AUTHORIZATION].to_str().unwrap();
        let out = scrub(&per_request, echoed);
        assert!(
            !out.contains(signature) && !out.contains("AKIAIOSFODNN7EXAMPLE"),
            "{out}"
        );
        assert!(
            scrub(&s, signature).contains(signature),
            "the signature is per request"
        );
    }

    #[test]
    fn bytes_without_secrets_are_not_copied() {
        let s = Scrubber::new([KEY]).unwrap();
        let body = Bytes::from_static(b"{\"ok\":true}");
        let out = s.scrub_bytes(body.clone());
        assert_eq!(out.as_ptr(), body.as_ptr());
        let dirty = Bytes::from(format!("{{\"echo\":\"{KEY}\"}}"));
        assert_eq!(&s.scrub_bytes(dirty)[..], b"{\"echo\":\"[redacted]\"}");
    }

    /// Cost per request, for the bench (numbers only mean something in release):
    /// `cargo test --release -p gatehouse-sidecar --lib scrub::tests::cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn cost_per_request() {
        use std::time::Instant;
        let s = Scrubber::new([KEY]).unwrap();
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(26);
        let body = Bytes::from(format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"completion_tokens":300,"total_tokens":312}}}}"#
        ));
        let events: Vec<Bytes> = (0..20)
            .map(|i| {
                Bytes::from(format!(
                    "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}]}}\n\n"
                ))
            })
            .collect();
        let n = 100_000u32;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(s.scrub_bytes(std::hint::black_box(body.clone())));
        }
        let buffered = t.elapsed() / n;
        let t = Instant::now();
        for _ in 0..n / 10 {
            for e in &events {
                std::hint::black_box(s.scrub_bytes(std::hint::black_box(e.clone())));
            }
        }
        let stream = t.elapsed() / (n / 10);
        println!(
            "scrub: {} B answer {buffered:?}/request; 20-event stream, one call per event, {stream:?}/request",
            body.len()
        );
    }
}
