//! Redaction: finding sensitive values (emails, phone numbers, card numbers, keys, custom
//! patterns) in prompts and answers, and masking, refusing or restoring them.
//!
//! An [`Engine`] is built once per route configuration, when the config snapshot is built: every
//! detector's patterns (built-in, [`detectors`]; custom, from the Route) go into one automaton,
//! a multi-pattern regex whose matches say which pattern matched, so a text is scanned once
//! whatever the number of detectors. A candidate is then confirmed by its detector's validator
//! (Luhn, mod-97, ...). The same patterns also make a lazy DFA that answers "could this text
//! still become a match?", which the stream hold-back needs ([`stream`]).
//!
//! A [`Session`] is one request's state: the placeholders handed out (the same value gets the
//! same placeholder within a request), the originals for `maskAndRestore`, and the counts per
//! detector. [`json`] applies it to the string values of a JSON body; [`events`] to the text of
//! stream events in each client dialect.

pub mod detectors;
pub mod events;
pub mod json;
pub mod stream;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use gatehouse_crds::config::{RedactActionConfig, RedactConfig};
use gatehouse_crds::guardrails::Detector;
use regex_automata::hybrid::dfa::{Cache as DfaCache, DFA};
use regex_automata::meta::{self, Regex};
use regex_automata::util::pool::Pool;
use regex_automata::util::start;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};

use self::detectors::Check;

/// Why an engine could not be built (a custom pattern the render check let through, or an
/// automaton over its size limits).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The multi-pattern regex.
    #[error("failed to compile the redaction patterns: {0}")]
    Regex(#[from] Box<meta::BuildError>),
    /// The lazy DFA of the stream hold-back.
    #[error("failed to compile the redaction patterns for streams: {0}")]
    Dfa(#[from] Box<regex_automata::hybrid::BuildError>),
    /// A detector name the sidecar does not know (a config newer than the sidecar).
    #[error("unknown redaction detector '{0}'")]
    UnknownDetector(String),
}

/// What a pattern of the automaton finds.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// A value of detector `kind` (index into [`Engine::kinds`]), confirmed by `check`.
    Value { kind: usize, check: Check },
    /// A placeholder this gateway handed out (`[EMAIL_1]`), to restore.
    Placeholder,
}

/// A detector as the engine reports it.
#[derive(Debug, Clone)]
pub struct Kind {
    /// Its name: the built-in name (`email`, `creditCard`) or the custom detector's.
    pub name: Arc<str>,
    /// Its placeholder name: `EMAIL`, `CREDIT_CARD`, `EMPLOYEE_ID`.
    pub label: String,
}

/// One confirmed finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where, in the text scanned.
    pub range: Range<usize>,
    /// What: a value of a detector (index into [`Engine::kinds`]), or a placeholder.
    pub what: What,
}

/// What a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A value of detector `kinds[i]`.
    Value(usize),
    /// A placeholder to restore.
    Placeholder,
}

type CacheFn =
    Box<dyn Fn() -> DfaCache + Send + Sync + std::panic::RefUnwindSafe + std::panic::UnwindSafe>;

/// The compiled detectors of one route configuration.
pub struct Engine {
    regex: Regex,
    dfa: Arc<DFA>,
    dfa_caches: Pool<DfaCache, CacheFn>,
    roles: Vec<Role>,
    kinds: Vec<Kind>,
    action: RedactActionConfig,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("kinds", &self.kinds)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

/// How the sidecar reads patterns: bytes, ASCII classes, as `guardrails::check_pattern` checks
/// custom ones.
fn syntax_config() -> syntax::Config {
    syntax::Config::new()
        .unicode(false)
        .utf8(false)
        .nest_limit(64)
}

impl Engine {
    /// Build the engine of a route's redaction.
    pub fn build(config: &RedactConfig) -> Result<Self, BuildError> {
        let mut patterns: Vec<String> = Vec::new();
        let mut roles = Vec::new();
        let mut kinds = Vec::new();
        let restore = config.action == RedactActionConfig::MaskAndRestore;
        // Custom detectors first: they are the Route's own, usually more specific.
        for c in &config.custom {
            kinds.push(Kind {
                name: Arc::from(c.name.as_str()),
                label: c.name.to_ascii_uppercase().replace('-', "_"),
            });
            roles.push(Role::Value {
                kind: kinds.len() - 1,
                check: Check::None,
            });
            patterns.push(c.pattern.clone());
        }
        let mut enabled = Vec::new();
        for name in &config.detectors {
            enabled.push(
                Detector::from_name(name)
                    .ok_or_else(|| BuildError::UnknownDetector(name.clone()))?,
            );
        }
        let mut builtin: Vec<(Detector, usize)> = Vec::new();
        for p in detectors::PATTERNS {
            if !enabled.contains(&p.detector) {
                continue;
            }
            let kind = match builtin.iter().find(|(d, _)| *d == p.detector) {
                Some((_, k)) => *k,
                None => {
                    kinds.push(Kind {
                        name: Arc::from(p.detector.as_str()),
                        label: detectors::label(p.detector).to_string(),
                    });
                    builtin.push((p.detector, kinds.len() - 1));
                    kinds.len() - 1
                }
            };
            roles.push(Role::Value {
                kind,
                check: p.check,
            });
            patterns.push(p.regex.to_string());
        }
        if restore && !kinds.is_empty() {
            // Placeholders go first: `[EMAIL_1]` is never read as anything else.
            let labels: Vec<String> = kinds
                .iter()
                .map(|k| regex_syntax::escape(&k.label))
                .collect();
            patterns.insert(0, format!(r"\[(?:{})_[0-9]{{1,6}}\]", labels.join("|")));
            roles.insert(0, Role::Placeholder);
        }
        let regex = Regex::builder()
            .syntax(syntax_config())
            .configure(
                Regex::config()
                    .utf8_empty(false)
                    .which_captures(regex_automata::nfa::thompson::WhichCaptures::Implicit),
            )
            .build_many(&patterns)
            .map_err(Box::new)?;
        let dfa = DFA::builder()
            .syntax(syntax_config())
            .thompson(regex_automata::nfa::thompson::Config::new().utf8(false))
            .build_many(&patterns)
            .map_err(Box::new)?;
        let dfa = Arc::new(dfa);
        let for_caches = dfa.clone();
        let create: CacheFn = Box::new(move || for_caches.create_cache());
        Ok(Self {
            regex,
            dfa,
            dfa_caches: Pool::new(create),
            roles,
            kinds,
            action: config.action,
        })
    }

    /// The detectors, by the index findings use.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// The action of the route.
    pub fn action(&self) -> RedactActionConfig {
        self.action
    }

    /// Every confirmed finding in `hay`, in order, not overlapping: one pass of the automaton;
    /// a candidate its validator refuses is skipped (a card number's search resumes after its
    /// first group, in case the candidate swallowed a group before it).
    pub fn scan(&self, hay: &[u8], mut found: impl FnMut(Found)) {
        let mut at = 0;
        // A candidate card number that failed: a phone number found inside it is its groups
        // read another way, a false positive.
        let mut failed_card: Option<Range<usize>> = None;
        while at < hay.len() {
            let input = Input::new(hay).range(at..);
            let Some(m) = self.regex.search(&input) else {
                return;
            };
            let role = self.roles.get(m.pattern().as_usize()).copied();
            let range = m.range();
            // Never split a character: custom patterns may match parts of UTF-8 sequences.
            let range = snap_start(hay, range.start)..snap_end(hay, range.end);
            let next = match role {
                Some(Role::Placeholder) => {
                    found(Found {
                        range: range.clone(),
                        what: What::Placeholder,
                    });
                    range.end
                }
                Some(Role::Value { kind, check }) => {
                    match detectors::confirm(check, hay, range.clone()) {
                        Some(r)
                            if check == Check::Phone
                                && failed_card
                                    .as_ref()
                                    .is_some_and(|f| r.start >= f.start && r.end <= f.end) =>
                        {
                            r.end
                        }
                        Some(r) => {
                            let end = r.end;
                            found(Found {
                                range: r,
                                what: What::Value(kind),
                            });
                            end
                        }
                        // A candidate that fails may have swallowed the start of a value (a
                        // group before a card number, `01 10.1.2.3`): search again after its
                        // first separator.
                        None if check == Check::None || check == Check::Random => range.end,
                        None if check == Check::Iban => {
                            range.start + detectors::iban_extent(&hay[range.clone()])
                        }
                        None => {
                            if check == Check::Card {
                                failed_card = Some(range.clone());
                            }
                            hay[range.clone()]
                                .iter()
                                .position(|b| !b.is_ascii_alphanumeric())
                                .map_or(range.end, |i| range.start + i + 1)
                        }
                    }
                }
                None => range.end,
            };
            at = next.max(m.start() + 1);
        }
    }

    /// Whether some text that starts with `hay[from..]` (exactly, then more) could be a match:
    /// the stream hold-back keeps such a tail until it knows.
    pub fn viable(&self, hay: &[u8], from: usize) -> bool {
        self.dead_at(hay, from).is_none()
    }

    /// Reading `hay` from `from` on: where what starts at `from` stops being a possible match
    /// (the end of the last match it made, else the byte that ended it); `None` while it still
    /// can go on.
    pub fn dead_at(&self, hay: &[u8], from: usize) -> Option<usize> {
        let mut cache = self.dfa_caches.get();
        dead_at(&self.dfa, &mut cache, hay, from)
    }

    /// Where the text of `hay[from..]` was last free of partial matches: the last position
    /// before which no match that is still going on can have started. Viable tails start at or
    /// after it (`from` when the automaton cannot tell).
    pub fn settled(&self, hay: &[u8], from: usize) -> usize {
        let mut cache = self.dfa_caches.get();
        settled(&self.dfa, &mut cache, hay, from).unwrap_or(from)
    }
}

fn dead_at(dfa: &DFA, cache: &mut DfaCache, hay: &[u8], from: usize) -> Option<usize> {
    let input = Input::new(hay).range(from..).anchored(Anchored::Yes);
    // Whenever the automaton cannot tell (it gave up), the text counts as still possible.
    let mut sid = dfa.start_state_forward(cache, &input).ok()?;
    // Matches show one byte late: entering a match state on byte `i` means a match ended at `i`.
    let mut match_end = None;
    for (i, &b) in hay.iter().enumerate().skip(from) {
        match dfa.next_state(cache, sid, b) {
            Ok(next) if next.is_dead() => return Some(match_end.unwrap_or(i)),
            Ok(next) if next.is_match() => {
                match_end = Some(i);
                sid = next;
            }
            Ok(next) if next.is_quit() => return None,
            Ok(next) => sid = next,
            Err(_) => return None,
        }
    }
    None
}

/// The unanchored automaton over `hay[from..]`; the last position where its state is the start
/// state for what came before (nothing partial going on).
fn settled(dfa: &DFA, cache: &mut DfaCache, hay: &[u8], from: usize) -> Option<usize> {
    let input = Input::new(hay).range(from..).anchored(Anchored::No);
    let mut sid = dfa.start_state_forward(cache, &input).ok()?;
    let mut last = from;
    let mut idle: [Option<regex_automata::hybrid::LazyStateID>; 256] = [None; 256];
    let mut clears = cache.clear_count();
    for (i, &b) in hay.iter().enumerate().skip(from) {
        sid = dfa.next_state(cache, sid, b).ok()?;
        if sid.is_quit() {
            return None;
        }
        if cache.clear_count() != clears {
            // State ids from before a cache clear mean nothing any more.
            idle = [None; 256];
            clears = cache.clear_count();
        }
        let start = match idle[usize::from(b)] {
            Some(s) => s,
            None => {
                let config = start::Config::new()
                    .anchored(Anchored::No)
                    .look_behind(Some(b));
                let s = dfa.start_state(cache, &config).ok()?;
                if cache.clear_count() != clears {
                    return None;
                }
                idle[usize::from(b)] = Some(s);
                s
            }
        };
        if sid == start {
            last = i + 1;
        }
    }
    Some(last)
}

/// The start of the UTF-8 character holding byte `at`.
fn snap_start(hay: &[u8], mut at: usize) -> usize {
    while at > 0 && at < hay.len() && (hay[at] & 0xC0) == 0x80 {
        at -= 1;
    }
    at
}

/// The end of the UTF-8 character holding the byte before `at`.
fn snap_end(hay: &[u8], mut at: usize) -> usize {
    while at < hay.len() && (hay[at] & 0xC0) == 0x80 {
        at += 1;
    }
    at
}

/// How text written into a JSON string must be escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// The text is plain (decoded) text.
    Plain,
    /// The text is JSON (raw JSON string content, or a tool call's JSON arguments): a value put
    /// back into it is escaped as JSON string content.
    Json,
}

/// Which way the text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The prompt, on its way to the provider.
    Request,
    /// The answer, on its way to the app.
    Response,
}

/// Counts per detector (indexed like [`Engine::kinds`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Values found in the prompt.
    pub request: Vec<u32>,
    /// Values found in the answer.
    pub response: Vec<u32>,
    /// Placeholders restored in the answer.
    pub restored: u32,
}

/// One request's redaction state.
#[derive(Debug)]
pub struct Session {
    engine: Arc<Engine>,
    /// Value → placeholder.
    placeholders: HashMap<Vec<u8>, String>,
    /// Placeholder → value (`maskAndRestore` only).
    originals: HashMap<Vec<u8>, Vec<u8>>,
    /// Next number per detector.
    next: Vec<u32>,
    /// What was found.
    pub counts: Counts,
    /// A value was found in the prompt of a `block` route.
    pub blocked: bool,
}

impl Session {
    /// A request's session with `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        let n = engine.kinds.len();
        Self {
            engine,
            placeholders: HashMap::new(),
            originals: HashMap::new(),
            next: vec![0; n],
            counts: Counts {
                request: vec![0; n],
                response: vec![0; n],
                restored: 0,
            },
            blocked: false,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Names of the detectors that found something in the prompt.
    pub fn request_detectors(&self) -> Vec<&str> {
        self.engine
            .kinds
            .iter()
            .zip(&self.counts.request)
            .filter(|(_, n)| **n > 0)
            .map(|(k, _)| &*k.name)
            .collect()
    }

    /// `text` with every finding replaced (values by placeholders; in answers of a
    /// `maskAndRestore` route, placeholders by their values), appended to `out`; whether
    /// anything changed. With `final_text` false, `text` ends where more may follow, which the
    /// caller handles ([`stream`]); here every finding counts.
    pub fn rewrite(
        &mut self,
        text: &[u8],
        dir: Direction,
        escape: Escape,
        out: &mut Vec<u8>,
    ) -> bool {
        let mut found = Vec::new();
        self.engine.scan(text, |f| found.push(f));
        self.apply(text, &found, dir, escape, out)
    }

    /// The JSON document `body` with the text of its string values rewritten ([`json`]); `None`
    /// when nothing changed.
    pub fn rewrite_json(&mut self, body: &[u8], dir: Direction) -> Option<Vec<u8>> {
        json::rewrite_strings(body, |_, text, escape, out| {
            self.rewrite(text, dir, escape, out)
        })
    }

    /// [`Session::rewrite_json`] of text the answer already carried piece by piece (a Responses
    /// stream repeats each text whole in its `*.done` events and `response.completed`): the same
    /// rewriting, the same placeholders, counting nothing again.
    pub fn rewrite_json_repeated(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        let counts = self.counts.clone();
        let out = self.rewrite_json(body, Direction::Response);
        self.counts = counts;
        out
    }

    /// `text` with every value replaced by its placeholder (the one this request handed out, else
    /// the bare label, `[EMAIL]`), appended to `out`, counting nothing: for records such as the
    /// audit line, which never hold a value, even one restored for the app.
    pub fn masked(&self, text: &[u8], escape: Escape, out: &mut Vec<u8>) -> bool {
        let mut at = 0;
        let mut changed = false;
        self.engine.scan(text, |f| {
            let What::Value(kind) = f.what else { return };
            if f.range.start < at {
                return;
            }
            let value = &text[f.range.clone()];
            let plain = match escape {
                Escape::Plain => value.to_vec(),
                Escape::Json => json::unescape(value).unwrap_or_else(|| value.to_vec()),
            };
            out.extend_from_slice(&text[at..f.range.start]);
            match self.placeholders.get(&plain) {
                Some(p) => out.extend_from_slice(p.as_bytes()),
                None => {
                    let label = self.engine.kinds.get(kind).map_or("REDACTED", |k| &k.label);
                    out.extend_from_slice(format!("[{label}]").as_bytes());
                }
            }
            at = f.range.end;
            changed = true;
        });
        out.extend_from_slice(&text[at..]);
        changed
    }

    /// [`Session::masked`] of the string values of a JSON document; `None` when nothing changed.
    pub fn masked_json(&self, body: &[u8]) -> Option<Vec<u8>> {
        json::rewrite_strings(body, |_, text, escape, out| self.masked(text, escape, out))
    }

    /// `text` with `found` (from [`Engine::scan`] of `text`) replaced, appended to `out`.
    pub fn apply(
        &mut self,
        text: &[u8],
        found: &[Found],
        dir: Direction,
        escape: Escape,
        out: &mut Vec<u8>,
    ) -> bool {
        let mut at = 0;
        let mut changed = false;
        for f in found {
            if f.range.start < at || f.range.end > text.len() {
                continue;
            }
            let value = &text[f.range.clone()];
            match f.what {
                What::Value(kind) => {
                    match dir {
                        Direction::Request => {
                            if let Some(n) = self.counts.request.get_mut(kind) {
                                *n += 1;
                            }
                            if self.engine.action == RedactActionConfig::Block {
                                self.blocked = true;
                                continue;
                            }
                        }
                        Direction::Response => {
                            if let Some(n) = self.counts.response.get_mut(kind) {
                                *n += 1;
                            }
                        }
                    }
                    out.extend_from_slice(&text[at..f.range.start]);
                    let placeholder = self.placeholder(kind, value, escape);
                    out.extend_from_slice(placeholder.as_bytes());
                    at = f.range.end;
                    changed = true;
                }
                What::Placeholder => {
                    if dir == Direction::Request {
                        continue;
                    }
                    let Some(original) = self.originals.get(value) else {
                        continue;
                    };
                    out.extend_from_slice(&text[at..f.range.start]);
                    match escape {
                        Escape::Plain => out.extend_from_slice(original),
                        Escape::Json => json::escape_into(original, out),
                    }
                    self.counts.restored += 1;
                    at = f.range.end;
                    changed = true;
                }
            }
        }
        out.extend_from_slice(&text[at..]);
        changed
    }

    /// The placeholder of `value` (found by detector `kind`), handed out on first sight. The
    /// value is kept as plain text: a value read from JSON string content is unescaped first.
    fn placeholder(&mut self, kind: usize, value: &[u8], escape: Escape) -> String {
        let plain: Vec<u8> = match escape {
            Escape::Plain => value.to_vec(),
            Escape::Json => json::unescape(value).unwrap_or_else(|| value.to_vec()),
        };
        if let Some(p) = self.placeholders.get(&plain) {
            return p.clone();
        }
        let label = self
            .engine
            .kinds
            .get(kind)
            .map_or("REDACTED", |k| k.label.as_str());
        let n = self.next.get_mut(kind).map_or(0, |n| {
            *n += 1;
            *n
        });
        let placeholder = format!("[{label}_{n}]");
        if self.engine.action == RedactActionConfig::MaskAndRestore {
            self.originals
                .insert(placeholder.as_bytes().to_vec(), plain.clone());
        }
        self.placeholders.insert(plain, placeholder.clone());
        placeholder
    }
}

#[cfg(test)]
mod tests;
