//! The built-in detectors: one or more patterns each, and the validator that confirms a
//! candidate (a Luhn check for card numbers, mod-97 for IBANs, address parsing for IPv6...).
//!
//! Patterns are matched on bytes with Unicode classes off (`\d`, `\w`, `\b` are ASCII), all of
//! them and the custom ones in one automaton ([`super::Engine`]). A validator may narrow the
//! candidate (an IBAN to its country's length, a card number to the groups that pass Luhn).

use std::ops::Range;

use gatehouse_crds::guardrails::Detector;

/// How a candidate is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Any match counts.
    None,
    /// Payment card: 13–19 digits, a known issuer prefix, Luhn.
    Card,
    /// IBAN: a known country's length (else 15–34) and mod-97.
    Iban,
    /// US SSN: no area 000, 666 or 9xx, no group 00, no serial 0000.
    Ssn,
    /// Phone: 8–15 digits (international) or 9–12 (national), one kind of separator.
    Phone,
    /// IPv4: not part of a longer dotted number.
    Ipv4,
    /// IPv6: parses, and is not a short token such as `a::b`.
    Ipv6,
    /// JWT: the header decodes to a JSON object naming its algorithm or type.
    Jwt,
    /// A key with a fixed prefix: its random part mixes digits with letters, or cases.
    Random,
}

/// One pattern of a built-in detector.
#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    /// The detector it belongs to.
    pub detector: Detector,
    /// The regular expression.
    pub regex: &'static str,
    /// How a candidate is confirmed.
    pub check: Check,
}

/// Email: a local part, `@`, a domain with a letter TLD.
const EMAIL: &str = r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}\b";

/// Every built-in pattern, in the order they go into the automaton: where two could match at
/// the same place, the earlier one wins (a JWT is not read as an email, a card number not as a
/// phone number).
pub static PATTERNS: &[Pattern] = &[
    // The body runs to the END line (or, unterminated, to the next `--`).
    pat(
        Detector::PrivateKey,
        r"-----BEGIN (?:[A-Z0-9]+ ){0,4}PRIVATE KEY-----(?:[^\-]|-[^\-])*(?:-----END (?:[A-Z0-9]+ ){0,4}PRIVATE KEY-----)?",
        Check::None,
    ),
    pat(
        Detector::Jwt,
        r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",
        Check::Jwt,
    ),
    pat(
        Detector::GithubToken,
        r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
        Check::None,
    ),
    pat(
        Detector::GithubToken,
        r"\bgithub_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}\b",
        Check::None,
    ),
    // OpenAI (sk-, sk-proj-, sk-svcacct-, sk-admin-) and Anthropic (sk-ant-api03-...).
    pat(Detector::ApiKey, r"\bsk-[A-Za-z0-9_\-]{20,}", Check::Random),
    // Google AI / Gemini.
    pat(
        Detector::ApiKey,
        r"\bAIza[0-9A-Za-z_\-]{35}\b",
        Check::Random,
    ),
    // Hugging Face, Groq, xAI, Replicate, Perplexity.
    pat(Detector::ApiKey, r"\bhf_[A-Za-z0-9]{34}\b", Check::Random),
    pat(Detector::ApiKey, r"\bgsk_[A-Za-z0-9]{52}\b", Check::Random),
    pat(Detector::ApiKey, r"\bxai-[A-Za-z0-9]{80}\b", Check::Random),
    pat(Detector::ApiKey, r"\br8_[A-Za-z0-9]{37}\b", Check::Random),
    pat(Detector::ApiKey, r"\bpplx-[A-Za-z0-9]{48}\b", Check::Random),
    // Stripe live keys, Slack tokens.
    pat(
        Detector::ApiKey,
        r"\b[rs]k_live_[A-Za-z0-9]{20,}",
        Check::Random,
    ),
    pat(
        Detector::ApiKey,
        r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
        Check::Random,
    ),
    pat(
        Detector::AwsAccessKey,
        r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
        Check::None,
    ),
    pat(Detector::Email, EMAIL, Check::None),
    pat(
        Detector::Iban,
        r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b",
        Check::Iban,
    ),
    pat(
        Detector::CreditCard,
        r"\b[0-9](?:[ \-]?[0-9]){12,18}\b",
        Check::Card,
    ),
    pat(Detector::Ssn, r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", Check::Ssn),
    pat(Detector::Ssn, r"\b[0-9]{3} [0-9]{2} [0-9]{4}\b", Check::Ssn),
    // IPv6: with an IPv4 tail (::ffff:10.0.0.1), all eight groups, or compressed with `::`.
    // A group never starts inside a word, and `12:30:45` or a MAC address is none of these.
    pat(
        Detector::IpAddress,
        r"(?:\b[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){1,6}:(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b",
        Check::Ipv6,
    ),
    pat(
        Detector::IpAddress,
        r"\b[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){7}\b",
        Check::Ipv6,
    ),
    pat(
        Detector::IpAddress,
        r"\b[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6}::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6}\b)?",
        Check::Ipv6,
    ),
    pat(
        Detector::IpAddress,
        r"::[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6}\b",
        Check::Ipv6,
    ),
    pat(
        Detector::IpAddress,
        r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\b",
        Check::Ipv4,
    ),
    // International: +, a country code, groups.
    pat(
        Detector::Phone,
        r"\+[1-9][0-9]{0,3}(?:[ .\-]?\(?[0-9]{1,5}\)?){0,6}[ .\-]?[0-9]{2,5}\b",
        Check::Phone,
    ),
    // North American national: (415) 555-2671, 415-555-2671, 415.555.2671.
    pat(
        Detector::Phone,
        r"(?:\([2-9][0-9]{2}\) ?|\b[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}\b",
        Check::Phone,
    ),
    // National with a trunk 0, written with separators: 020 7946 0958, 07700 900123,
    // 01 23 45 67 89 (ten digits in a row are as often an order number).
    pat(
        Detector::Phone,
        r"\b0[1-9][0-9]{0,4}[ .\-][0-9]{2,8}(?:[ .\-][0-9]{2,8}){0,4}\b",
        Check::Phone,
    ),
];

const fn pat(detector: Detector, regex: &'static str, check: Check) -> Pattern {
    Pattern {
        detector,
        regex,
        check,
    }
}

/// The placeholder name of a detector: `EMAIL`, `CREDIT_CARD`, ...
pub fn label(detector: Detector) -> &'static str {
    match detector {
        Detector::Email => "EMAIL",
        Detector::Phone => "PHONE",
        Detector::CreditCard => "CREDIT_CARD",
        Detector::Ssn => "SSN",
        Detector::Iban => "IBAN",
        Detector::IpAddress => "IP_ADDRESS",
        Detector::ApiKey => "API_KEY",
        Detector::GithubToken => "GITHUB_TOKEN",
        Detector::AwsAccessKey => "AWS_ACCESS_KEY",
        Detector::PrivateKey => "PRIVATE_KEY",
        Detector::Jwt => "JWT",
    }
}

/// Confirm the candidate `hay[range]`: the range of the value, possibly narrowed, or `None`.
pub fn confirm(check: Check, hay: &[u8], range: Range<usize>) -> Option<Range<usize>> {
    let m = &hay[range.clone()];
    match check {
        Check::None => Some(range),
        Check::Card => card(hay, range),
        Check::Iban => iban(m).map(|len| range.start..range.start + len),
        Check::Ssn => (!glued(hay, &range) && ssn(m)).then_some(range),
        Check::Phone => phone_in(hay, range),
        Check::Ipv4 => (!glued(hay, &range)).then_some(range),
        Check::Ipv6 => (!glued(hay, &range) && ipv6(m)).then_some(range),
        Check::Jwt => jwt(m).then_some(range),
        Check::Random => random(m).then_some(range),
    }
}

/// Whether the value is part of a longer token: a letter, digit or `_` right before or after it,
/// or a `-` or `.` joining it to one (a UUID's last group, `1.2.3.4.5`, `ORD-2024-000123`); a
/// `:` is not a joiner (`SSN:123-45-6789`).
fn glued(hay: &[u8], range: &Range<usize>) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let joiner = |b: u8| b == b'-' || b == b'.';
    let before = range.start.checked_sub(1).map(|i| hay[i]);
    let before2 = range.start.checked_sub(2).map(|i| hay[i]);
    let after = hay.get(range.end).copied();
    let after2 = hay.get(range.end + 1).copied();
    before.is_some_and(word)
        || (before.is_some_and(joiner) && before2.is_some_and(word))
        || after.is_some_and(word)
        || (after.is_some_and(joiner) && after2.is_some_and(word))
}

fn digits(m: &[u8]) -> impl Iterator<Item = u8> + '_ {
    m.iter().filter(|b| b.is_ascii_digit()).map(|b| b - b'0')
}

/// The Luhn check of a digit sequence.
pub fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let d = d * 2;
                if d > 9 { d - 9 } else { d }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether a card number of `digits` starts like one an issuer hands out (Visa, Mastercard,
/// American Express, Discover, JCB, Diners Club, UnionPay, Maestro).
fn issuer(digits: &[u8]) -> bool {
    let n = |k: usize| {
        digits
            .iter()
            .take(k)
            .fold(0u32, |acc, &d| acc * 10 + u32::from(d))
    };
    let len = digits.len();
    match digits.first() {
        Some(4) => matches!(len, 13 | 16 | 19),
        Some(5) => (51..=55).contains(&n(2)) || n(2) == 50 || (56..=59).contains(&n(2)),
        Some(2) => (2221..=2720).contains(&n(4)) && len == 16,
        Some(3) => {
            matches!(n(2), 34 | 37) && len == 15
                || (300..=305).contains(&n(3))
                || matches!(n(2), 36 | 38 | 39)
                || (3528..=3589).contains(&n(4))
        }
        Some(6) => true,
        _ => false,
    }
}

/// A card number in `hay[range]`, or in a run of its separator-delimited groups (the candidate
/// may have swallowed a group of something else before or after it).
fn card(hay: &[u8], range: Range<usize>) -> Option<Range<usize>> {
    let m = &hay[range.clone()];
    let seps: Vec<u8> = m.iter().copied().filter(|b| !b.is_ascii_digit()).collect();
    if seps.windows(2).any(|w| w[0] != w[1]) {
        return None;
    }
    let ok = |r: &Range<usize>| {
        let d: Vec<u8> = digits(&hay[r.clone()]).collect();
        (13..=19).contains(&d.len()) && issuer(&d) && luhn(&d) && !glued(hay, r)
    };
    if ok(&range) {
        return Some(range);
    }
    if seps.is_empty() {
        return None;
    }
    // Group boundaries: starts and ends of the digit groups.
    let mut groups = Vec::new();
    let mut start = range.start;
    for (i, b) in m.iter().enumerate() {
        if !b.is_ascii_digit() {
            groups.push(start..range.start + i);
            start = range.start + i + 1;
        }
    }
    groups.push(start..range.end);
    for first in 0..groups.len() {
        for last in (first..groups.len()).rev() {
            if first == 0 && last == groups.len() - 1 {
                continue;
            }
            let r = groups[first].start..groups[last].end;
            if ok(&r) {
                return Some(r);
            }
        }
    }
    None
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// Bytes of `m` (an IBAN candidate) its country's IBAN length covers, spaces included: where to
/// look on after a candidate that fails (what the pattern took after it may be a value of its
/// own; the IBAN's own groups are not).
pub fn iban_extent(m: &[u8]) -> usize {
    let want = m.get(..2).and_then(|c| {
        IBAN_LENGTHS
            .iter()
            .find(|(country, _)| &country[..] == c)
            .map(|(_, n)| *n)
    });
    let Some(want) = want else {
        return m.len();
    };
    m.iter()
        .enumerate()
        .filter(|(_, b)| **b != b' ')
        .nth(want - 1)
        .map_or(m.len(), |(i, _)| i + 1)
}

/// An IBAN at the start of `m`: the byte length of the valid IBAN (spaces included), or `None`.
fn iban(m: &[u8]) -> Option<usize> {
    let country = m.get(..2)?;
    let want = IBAN_LENGTHS
        .iter()
        .find(|(c, _)| &c[..] == country)
        .map(|(_, n)| *n);
    // Characters and where each ends, spaces skipped.
    let chars: Vec<(u8, usize)> = m
        .iter()
        .enumerate()
        .filter(|(_, b)| **b != b' ')
        .map(|(i, b)| (*b, i + 1))
        .collect();
    let len = match want {
        Some(n) if chars.len() >= n => n,
        Some(_) => return None,
        None if (15..=34).contains(&chars.len()) => chars.len(),
        None => return None,
    };
    let iban = &chars[..len];
    // The four first characters go to the end; letters count as 10..35; mod 97 must be 1.
    let mut rem: u32 = 0;
    for &(c, _) in iban[4..].iter().chain(&iban[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return None,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    // The value must end at a group end: not in the middle of a longer run.
    let end = iban.last().map(|&(_, e)| e)?;
    let next = m.get(end).copied();
    if next.is_some_and(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    (rem == 1).then_some(end)
}

fn ssn(m: &[u8]) -> bool {
    let d: Vec<u8> = digits(m).collect();
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = u32::from(d[3]) * 10 + u32::from(d[4]);
    let serial = d[5..].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// A phone number at the start of `hay[range]`: the whole candidate, or the longest run of its
/// first groups that is one (an international number's pattern may run on into the next
/// number: `+44 20 7946 0958 4111 1111 1111 1111`).
fn phone_in(hay: &[u8], range: Range<usize>) -> Option<Range<usize>> {
    let ok = |r: &Range<usize>| !glued(hay, r) && phone(&hay[r.clone()]);
    if ok(&range) {
        return Some(range);
    }
    let m = &hay[range.clone()];
    (1..m.len())
        .rev()
        .filter(|&i| m[i - 1].is_ascii_digit() && !m[i].is_ascii_digit() && m[i] != b')')
        .map(|i| range.start..range.start + i)
        .find(|r| ok(r))
}

fn phone(m: &[u8]) -> bool {
    let count = digits(m).count();
    match m.first() {
        Some(b'+') => (8..=15).contains(&count),
        // A trunk-0 number keeps one kind of separator: `01.02.2024 12` is a date and a time.
        Some(b'0') => {
            let seps: Vec<u8> = m
                .iter()
                .copied()
                .filter(|b| matches!(b, b' ' | b'.' | b'-'))
                .collect();
            seps.windows(2).all(|w| w[0] == w[1]) && (9..=12).contains(&count)
        }
        _ => count == 10,
    }
}

fn ipv6(m: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(m) else {
        return false;
    };
    if text.parse::<std::net::Ipv6Addr>().is_err() {
        return false;
    }
    // `a::b`, `d::`: too short to tell from code (`std::`, C++ scopes).
    let groups: Vec<&str> = text.split(':').filter(|g| !g.is_empty()).collect();
    groups.len() >= 2 && groups.iter().any(|g| g.len() >= 3)
}

fn jwt(m: &[u8]) -> bool {
    use base64::Engine as _;
    let header = m.split(|b| *b == b'.').next().unwrap_or_default();
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    json.first() == Some(&b'{')
        && (memchr::memmem::find(&json, b"\"alg\"").is_some()
            || memchr::memmem::find(&json, b"\"typ\"").is_some())
}

/// The random part of a prefixed key mixes digits and letters, or both cases (a long
/// hyphenated word after `sk-` is not a key).
fn random(m: &[u8]) -> bool {
    let body = m
        .iter()
        .position(|b| *b == b'-' || *b == b'_')
        .map_or(m, |i| &m[i + 1..]);
    let digit = body.iter().any(u8::is_ascii_digit);
    let lower = body.iter().any(u8::is_ascii_lowercase);
    let upper = body.iter().any(u8::is_ascii_uppercase);
    (digit && (lower || upper)) || (lower && upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_iban_checksums() {
        let d = |s: &str| digits(s.as_bytes()).collect::<Vec<_>>();
        assert!(luhn(&d("4111111111111111")));
        assert!(!luhn(&d("4111111111111112")));
        assert!(luhn(&d("378282246310005")));
        assert_eq!(iban(b"DE89370400440532013000"), Some(22));
        assert_eq!(iban(b"DE89 3704 0044 0532 0130 00"), Some(27));
        assert_eq!(iban(b"DE89370400440532013001"), None);
        assert_eq!(iban(b"GB82WEST12345698765432"), Some(22));
        assert_eq!(iban(b"DE89 3704 0044 0532 0130 00 ABC"), Some(27));
    }

    #[test]
    fn cards_are_found_inside_swallowed_groups() {
        let hay = b"ref 1234 4111 1111 1111 1111 end";
        // The pattern may take "1234 4111 1111 1111" first; the card is the last four groups.
        let r = card(hay, 4..23);
        assert_eq!(r.map(|r| &hay[r]), None::<&[u8]>);
        let r = card(hay, 4..28).unwrap();
        assert_eq!(&hay[r], b"4111 1111 1111 1111");
    }
}
