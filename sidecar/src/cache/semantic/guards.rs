//! Guards: what must be equal between a prompt and a cached prompt before a semantic hit is
//! served, however close their embeddings are.
//!
//! Embeddings of "convert 30 USD to EUR" and "convert 40 USD to EUR" are nearly identical; so
//! are a question and its negation, and "from Paris to London" and "from London to Paris". The
//! answer to each is different. [`Features::of`] pulls out, in order of appearance:
//!
//! - **numbers**: digit runs (`1,000` = `1000`, `3.50` = `3.5`, `5%`, `$5`, `-2`) and number
//!   words (`three` = `3`, `a dozen` is not);
//! - **entities**: capitalized words that are not common English words, acronyms, quoted
//!   strings (`"..."`, `'...'`, `` `...` ``), code identifiers (`snake_case`, `camelCase`,
//!   `a.b`, `f()`, `a::b`), URLs, e-mail addresses and paths, and words mixing letters and digits
//!   (`S3`, `gpt-4o`);
//! - **negations**: `not`, `no`, `never`, `n't`, `without`, `none`, … counted;
//! - **order**: when both prompts state a relation with a direction (`to`, `from`, `into`,
//!   `than`, `vs`, `before`, `after`, `->`…), the content words they share in the order each
//!   uses them (a reversal reorders them);
//! - **script/language**: the writing system, and for Latin text the language its function
//!   words point to (English, Spanish, French, German, Italian, Portuguese, Dutch), when clear.
//!
//! [`Features::compatible`] asks numbers and entities to be the same sequences, negation counts
//! to be equal, the shared words of directed relations to be in the same order, and the script and
//! language to agree. A guard only ever turns a hit into a miss: it costs saving, never
//! correctness.

/// What a prompt is about, beyond its meaning in embedding space.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Features {
    /// Numbers, normalized, in order.
    pub numbers: Vec<String>,
    /// Named entities and literals, lowercased, in order.
    pub entities: Vec<String>,
    /// How many negation cues.
    pub negations: u32,
    /// Whether the prompt states a directed relation (`to`, `from`, `than`, …).
    pub directed: bool,
    /// Content words (lowercased, crude stem), in order, for the order guard.
    pub words: Vec<String>,
    /// Script and language, when they can be told.
    pub language: Option<&'static str>,
}

/// Why a candidate was refused (for tests and the evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Other numbers.
    Numbers,
    /// Other named entities or literals.
    Entities,
    /// Negated in one, not the other.
    Negation,
    /// The same words of a directed relation, in another order.
    Order,
    /// Another script or language.
    Language,
}

impl Features {
    /// The features of `text`.
    pub fn of(text: &str) -> Self {
        let mut f = Features::default();
        let mut latin_votes = [0u32; LANGS.len()];
        let mut scripts = ScriptCount::default();
        for c in text.chars() {
            scripts.add(c);
        }
        // Literals first (they may contain spaces): quoted strings, then the rest is tokenized.
        let rest = take_quoted(text, &mut f.entities);
        let mut sentence_start = true;
        let mut prev_word: Option<String> = None;
        for raw in rest.split_whitespace() {
            let ends_sentence = raw.ends_with(['.', '?', '!', ':', ';']);
            let tok = raw.trim_matches(|c: char| !c.is_alphanumeric() && !"$-/_`@".contains(c));
            let tok = tok.trim_start_matches(['$']).trim_end_matches(['-', '/']);
            if tok.is_empty() {
                if raw.contains("->") || raw.contains('→') {
                    f.directed = true;
                }
                sentence_start = sentence_start || ends_sentence;
                continue;
            }
            let lower = tok.to_lowercase();
            for (i, lang) in LANGS.iter().enumerate() {
                if lang.1.contains(&lower.as_str()) {
                    latin_votes[i] += 1;
                }
            }
            classify(tok, &lower, sentence_start, prev_word.as_deref(), &mut f);
            sentence_start = ends_sentence;
            prev_word = Some(lower);
        }
        f.language = scripts.language(&latin_votes);
        f
    }

    /// Whether a hit on `cached` may answer `self`; the first mismatch otherwise.
    pub fn compatible(&self, cached: &Features) -> Result<(), Mismatch> {
        if !same_language(self.language, cached.language) {
            return Err(Mismatch::Language);
        }
        if self.numbers != cached.numbers {
            return Err(Mismatch::Numbers);
        }
        if self.entities != cached.entities {
            return Err(Mismatch::Entities);
        }
        if self.negations != cached.negations {
            return Err(Mismatch::Negation);
        }
        if self.directed && cached.directed {
            let shared = |a: &[String], b: &[String]| -> Vec<String> {
                let mut seen = Vec::new();
                for w in a {
                    if b.contains(w) && !seen.contains(w) {
                        seen.push(w.clone());
                    }
                }
                seen
            };
            if shared(&self.words, &cached.words) != shared(&cached.words, &self.words) {
                return Err(Mismatch::Order);
            }
        }
        Ok(())
    }
}

/// Languages agree when equal, or when one is Latin-script text whose language could not be told
/// and the other is a Latin-script language.
fn same_language(a: Option<&str>, b: Option<&str>) -> bool {
    let latin =
        |l: Option<&str>| LANGS.iter().any(|(name, _)| Some(*name) == l) || l == Some("latin");
    a == b || ((a == Some("latin") || b == Some("latin")) && latin(a) && latin(b))
}

fn classify(tok: &str, lower: &str, sentence_start: bool, prev: Option<&str>, f: &mut Features) {
    if DIRECTED.contains(&lower) {
        f.directed = true;
    }
    if is_negation(lower) {
        f.negations += 1;
    }
    if let Some(n) = number(tok) {
        // "1st", "2nd": the number; a negative sign only when the token is a number itself.
        f.numbers.push(n);
        return;
    }
    if let Some(n) = number_word(lower) {
        // "one of the", "no one": only count a number word where it quantifies.
        if !(lower == "one" && matches!(prev, Some("no" | "any" | "some" | "every" | "which"))) {
            f.numbers.push(n.to_string());
            return;
        }
    }
    if is_literal(tok) {
        f.entities.push(lower.to_string());
        return;
    }
    let has_upper = tok.chars().next().is_some_and(char::is_uppercase);
    let all_upper = tok.len() > 1 && tok.chars().all(|c| !c.is_lowercase());
    // A capitalized word that is not a common word is a name. Opening a sentence, capitals say
    // nothing ("Split", "Convert"): there, only an acronym or a possessive ("France's") is.
    let possessive = tok.ends_with("'s") || tok.ends_with("’s");
    let name = all_upper || (has_upper && (!sentence_start || possessive));
    if name && !COMMON.contains(&lower) {
        let bare = lower.trim_end_matches("'s").trim_end_matches("’s");
        f.entities.push(bare.to_string());
        return;
    }
    if !COMMON.contains(&lower) && !STOP_ORDER.contains(&lower) && lower.chars().count() > 2 {
        f.words.push(stem(lower));
    }
}

/// Quoted strings go to `entities`; the text with them blanked out is returned.
fn take_quoted(text: &str, entities: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let close = match c {
            '"' => Some('"'),
            '“' => Some('”'),
            '`' => Some('`'),
            '«' => Some('»'),
            // An apostrophe opens a quote only after a space or at the start ("it's" does not).
            '\'' if i == 0 || chars[i - 1].is_whitespace() => Some('\''),
            _ => None,
        };
        let len = close.and_then(|close| chars[i + 1..].iter().position(|&d| d == close));
        if let Some(len) = len {
            let inner: String = chars[i + 1..i + 1 + len].iter().collect();
            if !inner.trim().is_empty() {
                entities.push(inner.trim().to_lowercase());
                out.push(' ');
                i += len + 2;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// A numeric token, normalized: `1,000` → `1000`, `3.50` → `3.5`, `5%` → `5`, `2nd` → `2`.
fn number(tok: &str) -> Option<String> {
    let t = tok.trim_end_matches(['%', '$', '€', '£']);
    let t = ["st", "nd", "rd", "th"]
        .iter()
        .find_map(|s| {
            t.strip_suffix(s)
                .filter(|r| r.ends_with(|c: char| c.is_ascii_digit()))
        })
        .unwrap_or(t);
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if !t
        .chars()
        .all(|c| c.is_ascii_digit() || c == ',' || c == '.')
    {
        return None;
    }
    let t: String = t.chars().filter(|&c| c != ',').collect();
    let t = if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        t
    };
    let t = t.trim_start_matches('0');
    let t = if t.is_empty() || t.starts_with('.') {
        format!("0{t}")
    } else {
        t.to_string()
    };
    Some(if neg { format!("-{t}") } else { t })
}

fn number_word(lower: &str) -> Option<u64> {
    NUMBER_WORDS
        .iter()
        .find(|(w, _)| *w == lower)
        .map(|&(_, n)| n)
}

fn is_negation(lower: &str) -> bool {
    NEGATIONS.contains(&lower) || lower.ends_with("n't") || lower.ends_with("n’t")
}

/// URLs, e-mail addresses, paths, code identifiers, words mixing letters and digits.
fn is_literal(tok: &str) -> bool {
    let lower_then_upper = tok
        .chars()
        .zip(tok.chars().skip(1))
        .any(|(a, b)| a.is_lowercase() && b.is_uppercase());
    let has_digit = tok.chars().any(|c| c.is_ascii_digit());
    let has_alpha = tok.chars().any(char::is_alphabetic);
    tok.contains("://")
        || tok.starts_with("www.")
        || (tok.contains('@') && tok.contains('.'))
        || tok.starts_with('/')
        || tok.contains('_')
        || tok.contains("::")
        || tok.contains("()")
        || tok.contains('`')
        || (tok.contains('.') && has_alpha && !tok.ends_with('.'))
        || lower_then_upper
        || (has_digit && has_alpha)
}

/// A crude stem, enough for "flights"/"flight" and "converting"/"convert" to meet.
fn stem(w: &str) -> String {
    for suffix in ["ing", "ed", "es", "s"] {
        if let Some(r) = w.strip_suffix(suffix).filter(|r| r.chars().count() >= 3) {
            return r.to_string();
        }
    }
    w.to_string()
}

#[derive(Default)]
struct ScriptCount {
    latin: u32,
    cyrillic: u32,
    greek: u32,
    arabic: u32,
    hebrew: u32,
    cjk: u32,
    kana: u32,
    hangul: u32,
    devanagari: u32,
    thai: u32,
}

impl ScriptCount {
    fn add(&mut self, c: char) {
        let n = c as u32;
        let slot = match n {
            0x41..=0x5a | 0x61..=0x7a | 0xc0..=0x24f => &mut self.latin,
            0x370..=0x3ff => &mut self.greek,
            0x400..=0x4ff => &mut self.cyrillic,
            0x590..=0x5ff => &mut self.hebrew,
            0x600..=0x6ff => &mut self.arabic,
            0x900..=0x97f => &mut self.devanagari,
            0xe00..=0xe7f => &mut self.thai,
            0x3040..=0x30ff => &mut self.kana,
            0x4e00..=0x9fff | 0x3400..=0x4dbf => &mut self.cjk,
            0xac00..=0xd7af => &mut self.hangul,
            _ => return,
        };
        *slot += 1;
    }

    fn language(&self, latin_votes: &[u32]) -> Option<&'static str> {
        let scripts = [
            (self.latin, "latin"),
            (self.cyrillic, "cyrillic"),
            (self.greek, "greek"),
            (self.arabic, "arabic"),
            (self.hebrew, "hebrew"),
            // Japanese mixes kanji and kana: any kana makes it Japanese.
            (
                if self.kana > 0 {
                    self.cjk + self.kana
                } else {
                    0
                },
                "ja",
            ),
            (if self.kana == 0 { self.cjk } else { 0 }, "zh"),
            (self.hangul, "ko"),
            (self.devanagari, "devanagari"),
            (self.thai, "thai"),
        ];
        let (count, script) = scripts.iter().copied().max_by_key(|(n, _)| *n)?;
        if count == 0 {
            return None;
        }
        if script != "latin" {
            return Some(script);
        }
        // Latin: the language whose function words appear most, if one clearly leads.
        let mut best = (0u32, None);
        let mut second = 0u32;
        for (i, &v) in latin_votes.iter().enumerate() {
            if v > best.0 {
                second = best.0;
                best = (v, Some(LANGS[i].0));
            } else if v > second {
                second = v;
            }
        }
        match best {
            (v, Some(lang)) if v > second => Some(lang),
            _ => Some("latin"),
        }
    }
}

const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "without",
    "none",
    "nobody",
    "nothing",
    "neither",
    "nor",
    "cannot",
    "nowhere",
    "except",
    "excluding",
    "avoid",
    "lack",
    "lacks",
];

const DIRECTED: &[&str] = &[
    "to", "from", "into", "than", "vs", "versus", "before", "after", "over", "onto", "->",
    "towards", "toward", "beats", "against",
];

const NUMBER_WORDS: &[(&str, u64)] = &[
    ("zero", 0),
    ("one", 1),
    ("two", 2),
    ("three", 3),
    ("four", 4),
    ("five", 5),
    ("six", 6),
    ("seven", 7),
    ("eight", 8),
    ("nine", 9),
    ("ten", 10),
    ("eleven", 11),
    ("twelve", 12),
    ("thirteen", 13),
    ("fourteen", 14),
    ("fifteen", 15),
    ("sixteen", 16),
    ("seventeen", 17),
    ("eighteen", 18),
    ("nineteen", 19),
    ("twenty", 20),
    ("thirty", 30),
    ("forty", 40),
    ("fifty", 50),
    ("sixty", 60),
    ("seventy", 70),
    ("eighty", 80),
    ("ninety", 90),
    ("hundred", 100),
    ("thousand", 1000),
    ("million", 1_000_000),
    ("billion", 1_000_000_000),
    ("half", 0),
    ("twice", 2),
    ("double", 2),
    ("triple", 3),
];

/// Function words per Latin-script language, for the language guard.
const LANGS: &[(&str, &[&str])] = &[
    (
        "en",
        &[
            "the", "is", "are", "and", "of", "what", "how", "to", "in", "do", "does", "i", "my",
            "you", "a", "an", "can", "with", "for", "it", "this", "that", "which", "why",
        ],
    ),
    (
        "es",
        &[
            "el", "la", "los", "las", "es", "son", "y", "de", "qué", "que", "cómo", "como", "mi",
            "en", "un", "una", "por", "para", "con", "puedo", "cuál", "cuánto", "del",
        ],
    ),
    (
        "fr",
        &[
            "le",
            "la",
            "les",
            "est",
            "et",
            "de",
            "des",
            "du",
            "quel",
            "quelle",
            "comment",
            "mon",
            "ma",
            "je",
            "un",
            "une",
            "pour",
            "avec",
            "dans",
            "est-ce",
            "qu'est-ce",
            "pourquoi",
        ],
    ),
    (
        "de",
        &[
            "der", "die", "das", "ist", "und", "wie", "was", "ich", "mein", "meine", "ein", "eine",
            "mit", "für", "von", "zu", "kann", "warum", "welche", "nicht",
        ],
    ),
    (
        "it",
        &[
            "il", "lo", "gli", "è", "e", "di", "che", "come", "cosa", "mio", "mia", "un", "una",
            "per", "con", "perché", "quale", "posso", "della",
        ],
    ),
    (
        "pt",
        &[
            "o", "os", "as", "é", "e", "de", "que", "como", "meu", "minha", "um", "uma", "para",
            "com", "por", "qual", "posso", "não", "do", "da",
        ],
    ),
    (
        "nl",
        &[
            "de", "het", "is", "en", "van", "wat", "hoe", "ik", "mijn", "een", "met", "voor",
            "kan", "waarom", "welke", "niet",
        ],
    ),
];

/// Common English words: never names, even capitalized (a sentence's first word, a title).
const COMMON: &[&str] = &[
    "a",
    "about",
    "after",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "best",
    "between",
    "but",
    "by",
    "can",
    "could",
    "compare",
    "convert",
    "define",
    "describe",
    "did",
    "do",
    "does",
    "doing",
    "each",
    "either",
    "explain",
    "few",
    "find",
    "for",
    "from",
    "get",
    "give",
    "go",
    "good",
    "has",
    "have",
    "hello",
    "help",
    "her",
    "here",
    "hey",
    "hi",
    "his",
    "how",
    "however",
    "i",
    "i'm",
    "i've",
    "if",
    "in",
    "into",
    "is",
    "it",
    "it's",
    "its",
    "just",
    "let",
    "let's",
    "list",
    "make",
    "many",
    "may",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "my",
    "name",
    "need",
    "new",
    "no",
    "not",
    "now",
    "of",
    "ok",
    "okay",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "out",
    "over",
    "please",
    "quick",
    "quickly",
    "recommend",
    "same",
    "say",
    "should",
    "show",
    "so",
    "some",
    "suggest",
    "summarize",
    "tell",
    "than",
    "thanks",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "translate",
    "under",
    "up",
    "us",
    "use",
    "using",
    "very",
    "vs",
    "want",
    "was",
    "way",
    "we",
    "well",
    "were",
    "what",
    "what's",
    "whats",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "whose",
    "why",
    "will",
    "with",
    "within",
    "without",
    "would",
    "write",
    "yes",
    "you",
    "your",
    "yours",
    "is there",
    "are there",
    "never",
    "nothing",
    "none",
    "nobody",
    "cannot",
    "can't",
    "don't",
    "doesn't",
    "isn't",
    "aren't",
    "won't",
    "wasn't",
    "shouldn't",
    "wouldn't",
    "couldn't",
    "didn't",
    "how's",
    "where's",
    "who's",
    "could you",
    "can you",
    "briefly",
    "again",
    "really",
    "exactly",
    "actually",
    "step",
    "steps",
    "simple",
    "simply",
    "difference",
    "differences",
    "mean",
    "meaning",
    "example",
    "examples",
    "kind",
    "type",
    "types",
    "ways",
    "calculate",
    "create",
    "generate",
    "draft",
    "outline",
    "rewrite",
    "fix",
    "debug",
    "check",
    "is",
    "are",
    "was",
    "can",
    "does",
    "do",
    "did",
    "shall",
    "whats",
    "whose",
    "hows",
    "provide",
    "offer",
    "rank",
    "name",
    "identify",
    "recommendations",
    "ideas",
    "tips",
    "good",
];

/// Words the order guard ignores (the relation markers themselves, fillers).
const STOP_ORDER: &[&str] = &[
    "into", "than", "versus", "onto", "towards", "toward", "against", "beats", "which", "what",
    "does", "should", "would", "could", "there", "their", "they", "from", "with", "about", "after",
    "before", "over", "much", "many", "long", "take", "takes", "get", "going", "like",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(a: &str, b: &str) -> bool {
        Features::of(a).compatible(&Features::of(b)).is_ok()
    }

    fn why(a: &str, b: &str) -> Option<Mismatch> {
        Features::of(a).compatible(&Features::of(b)).err()
    }

    #[test]
    fn numbers_must_match() {
        assert_eq!(
            why("Convert 30 USD to EUR", "Convert 40 USD to EUR"),
            Some(Mismatch::Numbers)
        );
        assert_eq!(
            why("What is 12 times 7?", "What is 12 times 8?"),
            Some(Mismatch::Numbers)
        );
        assert_eq!(
            why("Is 3.5 larger than 3.05?", "Is 3.5 larger than 3.5?"),
            Some(Mismatch::Numbers)
        );
        // The same numbers written differently are the same.
        assert!(ok("A list of three fruits", "Give me 3 fruits"));
        assert!(ok("Split 1,000 into parts", "split 1000 into parts"));
        assert!(ok("Tip on $3.50", "tip on 3.5"));
        assert!(ok("the 2nd item", "item 2"));
    }

    #[test]
    fn number_order_matters() {
        assert_eq!(
            why("What is 10 minus 4?", "What is 4 minus 10?"),
            Some(Mismatch::Numbers)
        );
    }

    #[test]
    fn named_entities_must_match() {
        assert_eq!(
            why(
                "What is the capital of France?",
                "What is the capital of Spain?"
            ),
            Some(Mismatch::Entities)
        );
        assert_eq!(
            why("Who founded Microsoft?", "Who founded Apple?"),
            Some(Mismatch::Entities)
        );
        assert_eq!(
            why("How do I deploy to AWS?", "How do I deploy to GCP?"),
            Some(Mismatch::Entities)
        );
        // A sentence's first word and common words are not names.
        assert!(ok(
            "What is the capital of France?",
            "Tell me the capital of France."
        ));
        assert!(ok(
            "Explain recursion simply",
            "Could you explain recursion"
        ));
        assert!(ok(
            "What is France's capital?",
            "What is the capital of France?"
        ));
        // Opening a sentence, a possessive or an acronym is still a name.
        assert_eq!(
            why("France's capital?", "Spain's capital?"),
            Some(Mismatch::Entities)
        );
        assert_eq!(why("AWS pricing", "GCP pricing"), Some(Mismatch::Entities));
    }

    #[test]
    fn literals_must_match() {
        assert_eq!(
            why(
                "What does \"ephemeral\" mean?",
                "What does \"ethereal\" mean?"
            ),
            Some(Mismatch::Entities)
        );
        assert_eq!(
            why("what does my_var do here", "what does my_val do here"),
            Some(Mismatch::Entities)
        );
        assert_eq!(
            why("Explain getUserById", "Explain getUserByName"),
            Some(Mismatch::Entities)
        );
        assert_eq!(
            why(
                "Summarize https://example.com/a",
                "Summarize https://example.com/b"
            ),
            Some(Mismatch::Entities)
        );
        assert_eq!(
            why("Write to alice@example.com", "Write to bob@example.com"),
            Some(Mismatch::Entities)
        );
        assert_eq!(
            why("What is in /etc/hosts", "What is in /etc/passwd"),
            Some(Mismatch::Entities)
        );
        assert_eq!(
            why("Compare gpt-4o pricing", "Compare gpt-5 pricing"),
            Some(Mismatch::Entities)
        );
        // An apostrophe inside a word is not a quote.
        assert!(ok(
            "What's Rust's ownership model?",
            "Rust's ownership model?"
        ));
    }

    #[test]
    fn negation_must_match() {
        assert_eq!(
            why(
                "Which foods are gluten-free?",
                "Which foods are not gluten-free?"
            ),
            Some(Mismatch::Negation)
        );
        assert_eq!(
            why("Should I use a VPN?", "Why shouldn't I use a VPN?"),
            Some(Mismatch::Negation)
        );
        assert_eq!(
            why("Recipes with eggs", "Recipes without eggs"),
            Some(Mismatch::Negation)
        );
        assert!(ok(
            "Why isn't my code compiling?",
            "Why does my code not compile?"
        ));
    }

    #[test]
    fn reversed_relations_differ() {
        assert_eq!(
            why(
                "convert celsius to fahrenheit",
                "convert fahrenheit to celsius"
            ),
            Some(Mismatch::Order)
        );
        assert_eq!(
            why(
                "how long is the flight from paris to london",
                "how long is the flight from london to paris"
            ),
            Some(Mismatch::Order)
        );
        assert_eq!(
            why(
                "is a lion stronger than a tiger",
                "is a tiger stronger than a lion"
            ),
            Some(Mismatch::Order)
        );
        assert_eq!(
            why(
                "translate this from english to german",
                "translate this from german to english"
            ),
            Some(Mismatch::Order)
        );
        // Capitalized, the same reversal is caught by the entity order.
        assert_eq!(
            why(
                "Flights from Paris to London",
                "Flights from London to Paris"
            ),
            Some(Mismatch::Entities)
        );
        // Without a directed relation, word order is free.
        assert!(ok(
            "What is the capital city of France?",
            "In France, what is the capital city?"
        ));
        assert!(ok(
            "How to convert celsius to fahrenheit",
            "Converting celsius to fahrenheit"
        ));
    }

    #[test]
    fn language_must_match() {
        assert_eq!(
            why(
                "How do I reset my password?",
                "¿Cómo puedo restablecer mi contraseña?"
            ),
            Some(Mismatch::Language)
        );
        assert_eq!(
            why("What is the weather like?", "Какая сегодня погода?"),
            Some(Mismatch::Language)
        );
        assert_eq!(
            why("What time is it?", "今何時ですか？"),
            Some(Mismatch::Language)
        );
        assert!(ok(
            "How do I reset my password?",
            "How can I reset my password"
        ));
    }

    #[test]
    fn features_of_odd_input_do_not_panic() {
        for s in [
            "",
            " ",
            "\"",
            "'",
            "`unterminated",
            "--",
            "-",
            "$",
            "1,,,.",
            "..",
            "💥",
            "'a'",
            "\u{0}",
            "0.000",
            "-0",
            "1st2nd",
        ] {
            let f = Features::of(s);
            assert!(
                f.compatible(&f).is_ok(),
                "{s:?} is not compatible with itself"
            );
        }
        assert_eq!(Features::of("0.000").numbers, vec!["0".to_string()]);
    }
}
