use super::*;
use gatehouse_crds::config::CustomDetectorConfig;

/// One engine per action, built once for every test of the binary.
fn engine(action: RedactActionConfig) -> Arc<Engine> {
    use std::sync::OnceLock;
    static ENGINES: [OnceLock<Arc<Engine>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = match action {
        RedactActionConfig::Mask => &ENGINES[0],
        RedactActionConfig::Block => &ENGINES[1],
        RedactActionConfig::MaskAndRestore => &ENGINES[2],
    };
    slot.get_or_init(|| build(action)).clone()
}

fn build(action: RedactActionConfig) -> Arc<Engine> {
    let config = RedactConfig {
        action,
        detectors: Detector::ALL
            .iter()
            .map(|d| d.as_str().to_string())
            .collect(),
        custom: vec![CustomDetectorConfig {
            name: "employee-id".into(),
            pattern: r"\bEMP-[0-9]{6}\b".into(),
        }],
    };
    Arc::new(Engine::build(&config).unwrap())
}

/// The detector names found in `text`, with the text they cover.
fn found(engine: &Engine, text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    engine.scan(text.as_bytes(), |f| {
        let name = match f.what {
            What::Value(k) => engine.kinds()[k].name.to_string(),
            What::Placeholder => "placeholder".into(),
        };
        out.push((name, text[f.range].to_string()));
    });
    out
}

#[test]
fn every_detector_finds_its_values() {
    let e = engine(RedactActionConfig::Mask);
    let cases = [
        (
            "mail jane.doe+x@example.co.uk now",
            "email",
            "jane.doe+x@example.co.uk",
        ),
        ("call +1 415 555 2671.", "phone", "+1 415 555 2671"),
        ("call (415) 555-2671", "phone", "(415) 555-2671"),
        ("ring 020 7946 0958 today", "phone", "020 7946 0958"),
        (
            "card 4111 1111 1111 1111 exp",
            "creditCard",
            "4111 1111 1111 1111",
        ),
        ("amex 378282246310005.", "creditCard", "378282246310005"),
        ("ssn 123-45-6789", "ssn", "123-45-6789"),
        (
            "iban DE89 3704 0044 0532 0130 00 ok",
            "iban",
            "DE89 3704 0044 0532 0130 00",
        ),
        ("host 192.168.10.254 up", "ipAddress", "192.168.10.254"),
        (
            "v6 2001:db8::8a2e:370:7334 up",
            "ipAddress",
            "2001:db8::8a2e:370:7334",
        ),
        (
            "key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w end",
            "apiKey",
            "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w",
        ),
        (
            "gh ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 x",
            "githubToken",
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        ),
        (
            "aws AKIAIOSFODNN7EXAMPLE x",
            "awsAccessKey",
            "AKIAIOSFODNN7EXAMPLE",
        ),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end",
            "jwt",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIB\nabc=\n-----END RSA PRIVATE KEY----- done",
            "privateKey",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIB\nabc=\n-----END RSA PRIVATE KEY-----",
        ),
        ("id EMP-123456 here", "employee-id", "EMP-123456"),
    ];
    for (text, detector, value) in cases {
        assert_eq!(
            found(&e, text),
            [(detector.to_string(), value.to_string())],
            "{text}"
        );
    }
}

#[test]
fn look_alikes_are_not_found() {
    let e = engine(RedactActionConfig::Mask);
    for text in [
        "card 4111 1111 1111 1112 fails Luhn",
        "iban DE89 3704 0044 0532 0130 01 wrong checksum",
        "version 1.2.3 and v2.14.1 and 10.0.19045",
        "order ORD-2024-000123456 and #100234567",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "sha 3f786850e387550fdab836ed7e6dc881de23001b",
        "date 2024-01-15 and 01.02.2024 12:30:45",
        "rust std::vec::Vec and a::b",
        "mac 00:1a:2b:3c:4d:5e",
        "python sk-learn and sk-this-is-a-long-hyphenated-word",
        "ssn-shaped 000-12-3456 and 666-12-3456",
        "1.2.3.4.5 is not an address",
    ] {
        assert_eq!(found(&e, text), Vec::<(String, String)>::new(), "{text}");
    }
}

#[test]
fn mask_replaces_values_with_numbered_typed_placeholders() {
    let e = engine(RedactActionConfig::Mask);
    let mut s = Session::new(e);
    let mut out = Vec::new();
    let changed = s.rewrite(
        b"a@b.io, c@d.io and a@b.io; card 4111111111111111",
        Direction::Request,
        Escape::Plain,
        &mut out,
    );
    assert!(changed);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "[EMAIL_1], [EMAIL_2] and [EMAIL_1]; card [CREDIT_CARD_1]"
    );
    assert_eq!(s.request_detectors(), ["email", "creditCard"]);
}

#[test]
fn restore_gives_the_originals_back_escaped_where_needed() {
    let e = engine(RedactActionConfig::MaskAndRestore);
    let mut s = Session::new(e);
    let mut out = Vec::new();
    s.rewrite(
        b"key: -----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY----- mail x@y.org",
        Direction::Request,
        Escape::Plain,
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "key: [PRIVATE_KEY_1] mail [EMAIL_1]"
    );
    let mut plain = Vec::new();
    s.rewrite(
        b"to [EMAIL_1], key [PRIVATE_KEY_1] [EMAIL_9]",
        Direction::Response,
        Escape::Plain,
        &mut plain,
    );
    assert_eq!(
        String::from_utf8(plain).unwrap(),
        "to x@y.org, key -----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY----- [EMAIL_9]"
    );
    let mut json = Vec::new();
    s.rewrite(
        br#"{"k":"[PRIVATE_KEY_1]"}"#,
        Direction::Response,
        Escape::Json,
        &mut json,
    );
    assert_eq!(
        String::from_utf8(json).unwrap(),
        r#"{"k":"-----BEGIN PRIVATE KEY-----\nAAA\n-----END PRIVATE KEY-----"}"#
    );
    // A value the provider made up is masked.
    let mut made_up = Vec::new();
    s.rewrite(
        b"write to z@w.org",
        Direction::Response,
        Escape::Plain,
        &mut made_up,
    );
    assert_eq!(String::from_utf8(made_up).unwrap(), "write to [EMAIL_2]");
}

#[test]
fn block_counts_and_leaves_the_text() {
    let mut s = Session::new(engine(RedactActionConfig::Block));
    let mut out = Vec::new();
    s.rewrite(
        b"ssn 123-45-6789",
        Direction::Request,
        Escape::Plain,
        &mut out,
    );
    assert!(s.blocked);
    assert_eq!(s.request_detectors(), ["ssn"]);
}

#[test]
fn the_automaton_knows_when_nothing_is_going_on() {
    let e = engine(RedactActionConfig::Mask);
    let text = b"hello there, my friend";
    // After ", " nothing can be going on; "my" may start an email's local part.
    let settled = e.settled(text, 0);
    assert!(settled >= 13, "settled at {settled}");
    assert!(e.viable(text, 16), "'friend' could start an email");
    assert!(!e.viable(b"friend, ", 0));
    assert!(e.viable(b"card 4111 1111", 5));
}

/// Feed `pieces` through one channel; the text the client gets, and how many pieces each
/// piece's text was late by.
fn stream(session: &mut Session, pieces: &[&str]) -> String {
    let mut channel = stream::Channel::default();
    let mut out = Vec::new();
    for p in pieces {
        channel.feed(session, p.as_bytes(), Escape::Plain, &mut out);
    }
    channel.flush(session, Escape::Plain, &mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn values_split_across_events_are_caught_at_every_split() {
    let text = "Dear jane.doe@example.com, your card 4111 1111 1111 1111 and key \
                sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1w are noted.";
    let want = "Dear [EMAIL_1], your card [CREDIT_CARD_1] and key [API_KEY_1] are noted.";
    let e = engine(RedactActionConfig::Mask);
    for a in 1..text.len() {
        for b in (a + 1..text.len()).step_by(7) {
            let mut s = Session::new(e.clone());
            let got = stream(&mut s, &[&text[..a], &text[a..b], &text[b..]]);
            assert_eq!(got, want, "split at {a}, {b}");
        }
    }
}

#[test]
fn placeholders_split_across_events_are_restored() {
    let e = engine(RedactActionConfig::MaskAndRestore);
    let mut s = Session::new(e);
    let mut sink = Vec::new();
    s.rewrite(
        b"bob@corp.example",
        Direction::Request,
        Escape::Plain,
        &mut sink,
    );
    let text = "I will write to [EMAIL_1] today.";
    for a in 1..text.len() {
        let got = stream(&mut s, &[&text[..a], &text[a..]]);
        assert_eq!(
            got, "I will write to bob@corp.example today.",
            "split at {a}"
        );
    }
    // One character per event.
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(
        stream(&mut s, &pieces),
        "I will write to bob@corp.example today."
    );
}

#[test]
fn prose_is_held_back_by_at_most_one_word() {
    let mut s = Session::new(engine(RedactActionConfig::Mask));
    let mut channel = stream::Channel::default();
    let words = ["The", " quick", " brown", " fox", " jumps", " over", " it."];
    let mut sent = String::new();
    for (i, w) in words.iter().enumerate() {
        let mut out = Vec::new();
        channel.feed(&mut s, w.as_bytes(), Escape::Plain, &mut out);
        sent.push_str(std::str::from_utf8(&out).unwrap());
        // Everything up to the previous word has gone out.
        let before: String = words[..i].concat();
        assert!(sent.len() >= before.len(), "after {w:?}: sent {sent:?}");
    }
}

#[test]
fn a_value_longer_than_the_window_is_masked_and_its_rest_dropped() {
    let mut s = Session::new(engine(RedactActionConfig::Mask));
    let mut channel = stream::Channel::default();
    let mut out = Vec::new();
    channel.feed(
        &mut s,
        b"key -----BEGIN PRIVATE KEY-----\n",
        Escape::Plain,
        &mut out,
    );
    let line = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\n".repeat(300);
    channel.feed(&mut s, line.as_bytes(), Escape::Plain, &mut out);
    channel.feed(&mut s, line.as_bytes(), Escape::Plain, &mut out);
    channel.feed(
        &mut s,
        b"-----END PRIVATE KEY----- bye",
        Escape::Plain,
        &mut out,
    );
    channel.flush(&mut s, Escape::Plain, &mut out);
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("QUJD"), "{}", &out[..out.len().min(200)]);
    assert!(
        out.starts_with("key [PRIVATE_KEY_1]"),
        "{}",
        &out[..out.len().min(200)]
    );
    assert!(out.ends_with(" bye"), "{out}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Text with values, placeholders and prose mixed, as a stream might carry it.
    fn text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("bob@example.com".to_string()),
            Just("4111 1111 1111 1111".to_string()),
            Just("[EMAIL_1]".to_string()),
            Just("+44 20 7946 0958".to_string()),
            Just("10.1.2.3".to_string()),
            Just("é".to_string()),
            "[a-z]{1,8}",
            "[0-9]{1,6}",
            "[ .,:@\\-\\[\\]]",
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|p| p.join(" "))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// However the text is cut into events, the client gets what one pass over the whole
        /// text gives.
        #[test]
        fn a_stream_reads_like_the_whole_text(text in text(), cuts in proptest::collection::vec(0usize..400, 0..12)) {
            let e = engine(RedactActionConfig::MaskAndRestore);
            let mut whole = Session::new(e.clone());
            let mut sink = Vec::new();
            whole.rewrite(b"bob@example.com", Direction::Request, Escape::Plain, &mut sink);
            let mut want = Vec::new();
            whole.rewrite(text.as_bytes(), Direction::Response, Escape::Plain, &mut want);
            let mut streamed = Session::new(e);
            streamed.rewrite(b"bob@example.com", Direction::Request, Escape::Plain, &mut sink);
            let mut cuts: Vec<usize> = cuts
                .into_iter()
                .map(|c| c.min(text.len()))
                .filter(|c| text.is_char_boundary(*c))
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&text[at..c]);
                at = c;
            }
            pieces.push(&text[at..]);
            let got = stream(&mut streamed, &pieces);
            prop_assert_eq!(got, String::from_utf8(want).unwrap());
        }

        /// Rewriting the strings of any JSON document gives valid JSON with the same shape, and
        /// no value under a scanned key survives (the keys `json.rs` leaves alone by design,
        /// such as `id` and `data`, are not generated here).
        #[test]
        fn json_stays_json(values in proptest::collection::vec(text(), 1..6), keys in proptest::collection::vec("[a-z_]{1,8}".prop_filter("a key json.rs skips", |k| !crate::redact::json::is_skipped(k.as_bytes())), 1..6)) {
            let object: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .zip(values.iter().cycle())
                .map(|(k, v)| (k.clone(), serde_json::json!([v, {"content": format!("{v}\n\"q\"")}])))
                .collect();
            let body = serde_json::to_vec(&object).unwrap();
            let mut s = Session::new(engine(RedactActionConfig::Mask));
            let out = s.rewrite_json(&body, Direction::Request).unwrap_or(body.clone());
            let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(parsed.len(), object.len());
            let text = String::from_utf8(out).unwrap();
            prop_assert!(!text.contains("bob@example.com"));
            prop_assert!(!text.contains("4111 1111 1111 1111"));
        }
    }
}

/// A Responses event as the wire carries it.
fn responses_event(n: u64, mut data: serde_json::Value) -> String {
    data["sequence_number"] = n.into();
    let kind = data["type"].as_str().unwrap().to_string();
    format!("event: {kind}\ndata: {data}\n\n")
}

#[test]
fn responses_arguments_and_reasoning_are_held_back_and_repeated_masked() {
    use serde_json::json;
    let args = [
        r#"{"to":"bob@exa"#,
        r#"mple.com","n":"4111 1111 "#,
        r#"1111 1111"}"#,
    ];
    let whole_args: String = args.concat();
    let reasoning = ["mail carol@exa", "mple.net"];
    let mut events = vec![
        json!({"type":"response.created","response":{"id":"resp_1","output":[]}}),
        json!({"type":"response.output_item.added","output_index":0,"item":{"type":"reasoning","id":"rs_1","content":[]}}),
    ];
    for r in reasoning {
        events.push(json!({"type":"response.reasoning_text.delta","item_id":"rs_1","output_index":0,"content_index":0,"delta":r}));
    }
    // No `reasoning_text.done`: the item's end ends the channel.
    events.push(json!({"type":"response.output_item.done","output_index":0,"item":{"type":"reasoning","id":"rs_1","content":[{"type":"reasoning_text","text":reasoning.concat()}]}}));
    events.push(json!({"type":"response.output_item.added","output_index":1,"item":{"type":"function_call","id":"fc_1","call_id":"c1","name":"send","arguments":""}}));
    for a in args {
        events.push(json!({"type":"response.function_call_arguments.delta","item_id":"fc_1","output_index":1,"delta":a}));
    }
    events.push(json!({"type":"response.function_call_arguments.done","item_id":"fc_1","output_index":1,"arguments":whole_args}));
    events.push(json!({"type":"response.output_item.done","output_index":1,"item":{"type":"function_call","id":"fc_1","call_id":"c1","name":"send","arguments":whole_args}}));
    events.push(json!({"type":"response.completed","response":{"id":"resp_1","output":[
        {"type":"reasoning","id":"rs_1","content":[{"type":"reasoning_text","text":reasoning.concat()}]},
        {"type":"function_call","id":"fc_1","call_id":"c1","name":"send","arguments":whole_args}]}}));
    let mut session = Session::new(engine(RedactActionConfig::Mask));
    let mut text = events::StreamText::default();
    let mut out = String::new();
    for (n, e) in events.into_iter().enumerate() {
        let wire = responses_event(n as u64, e);
        let got = text.rewrite(
            crate::dialect::Dialect::Responses,
            &mut session,
            wire.as_bytes(),
        );
        out.push_str(&got.map_or(wire, |b| String::from_utf8(b.to_vec()).unwrap()));
    }
    for value in ["example.com", "example.net", "4111"] {
        assert!(!out.contains(value), "{value} reached the client:\n{out}");
    }
    let mut reasoning_text = String::new();
    let mut arguments = String::new();
    for (n, e) in out.split("\n\n").filter(|e| !e.is_empty()).enumerate() {
        let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["sequence_number"], n as u64, "{out}");
        match v["type"].as_str().unwrap() {
            "response.reasoning_text.delta" => {
                reasoning_text.push_str(v["delta"].as_str().unwrap())
            }
            "response.function_call_arguments.delta" => {
                arguments.push_str(v["delta"].as_str().unwrap());
            }
            "response.function_call_arguments.done" => assert_eq!(v["arguments"], arguments),
            "response.output_item.done" if v["output_index"] == 0 => {
                assert_eq!(v["item"]["content"][0]["text"], reasoning_text);
            }
            "response.output_item.done" => assert_eq!(v["item"]["arguments"], arguments),
            "response.completed" => {
                assert_eq!(
                    v["response"]["output"][0]["content"][0]["text"],
                    reasoning_text
                );
                assert_eq!(v["response"]["output"][1]["arguments"], arguments);
            }
            _ => {}
        }
    }
    assert_eq!(reasoning_text, "mail [EMAIL_1]");
    let parsed: serde_json::Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(parsed, json!({"to":"[EMAIL_2]","n":"[CREDIT_CARD_1]"}));
    // Each value counted once, though the stream carried it four times.
    let card = session
        .engine()
        .kinds()
        .iter()
        .position(|k| &*k.name == "creditCard")
        .unwrap();
    assert_eq!(session.counts.response[card], 1);
}
