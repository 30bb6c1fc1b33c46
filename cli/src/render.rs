//! The commands' output, from what the API and the sidecars answered (pure functions, tested
//! without a cluster).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// A table: columns padded to their widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            s.push_str(cell);
            if i < last {
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count() + 2;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |m| format!("{m:.1} ms"))
}

fn time(unix_ms: &Value) -> String {
    unix_ms
        .as_i64()
        .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| "-".into(), |t| format!("{t:.3}"))
}

/// `kubectl gatehouse request <id>`: one record, as the sidecar of `pod` (`ns/name`) keeps it.
pub fn request(record: &Value, pod: &str) -> String {
    let mut out = String::new();
    let r = record;
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{name:<12}{value}");
    };
    field("Request", s(&r["request_id"]));
    field("Time", time(&r["time_unix_ms"]));
    field(
        "Workload",
        format!(
            "{}/{} (pod {pod}){}",
            s(&r["namespace"]),
            s(&r["workload"]),
            r["tag"]
                .as_str()
                .map(|t| format!(", tag {t}"))
                .unwrap_or_default()
        ),
    );
    field(
        "Operation",
        format!(
            "{} {}{}",
            s(&r["operation"]),
            s(&r["requested_model"]),
            if r["stream"] == true { " (stream)" } else { "" }
        ),
    );
    field(
        "Route",
        format!(
            "{}{}",
            s(&r["route"]),
            r["rule"]
                .as_str()
                .map(|rule| format!(", rule {rule}"))
                .unwrap_or_else(|| ", no rule matched".into())
        ),
    );
    let answered = match (r["provider"].as_str(), r["model"].as_str()) {
        (Some(p), Some(m)) => format!("{p} / {m}"),
        _ => "no provider answered".into(),
    };
    field("Answered by", answered);
    field(
        "Status",
        format!(
            "{} ({}){}",
            s(&r["status"]),
            s(&r["end"]),
            r["error"]
                .as_str()
                .map(|e| format!(", error {e}"))
                .unwrap_or_default()
        ),
    );
    let t = &r["timings"];
    field(
        "Duration",
        format!(
            "{} (response head {}, upstream {}, gateway {})",
            ms(&t["duration_ms"]),
            ms(&t["response_head_ms"]),
            ms(&t["upstream_ms"]),
            ms(&t["gateway_overhead_ms"])
        ),
    );
    let tokens = &r["tokens"];
    field(
        "Tokens",
        if tokens.is_null() {
            "-".into()
        } else {
            format!(
                "input {}, output {} (cached read {}, cache write {}, reasoning {}){}",
                s(&tokens["input"]),
                s(&tokens["output"]),
                s(&tokens["cached_read"]),
                s(&tokens["cache_write"]),
                s(&tokens["reasoning"]),
                if tokens["estimated"] == true {
                    ", estimated"
                } else {
                    ""
                }
            )
        },
    );
    field(
        "Cost",
        r["cost_usd"]
            .as_f64()
            .map_or_else(|| "unknown (not priced)".into(), |c| format!("${c:.8}")),
    );
    field("Cache", s(&r["cache"]));
    let b = &r["budget"];
    field(
        "Budget",
        if b.is_null() {
            "no Budget covers it".into()
        } else {
            let names: Vec<String> = b["budgets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            format!(
                "{} ({}){}",
                s(&b["outcome"]),
                names.join(", "),
                b["downgraded_to"]
                    .as_str()
                    .map(|d| format!(", downgraded to {d}"))
                    .unwrap_or_default()
            )
        },
    );
    let rl = &r["rate_limit"];
    field(
        "Rate limit",
        if rl.is_null() {
            "no limit applies".into()
        } else {
            format!(
                "{}{}",
                s(&rl["outcome"]),
                rl["refused_by"]
                    .as_str()
                    .map(|l| format!(" by {l}"))
                    .unwrap_or_default()
            )
        },
    );
    if let Some(trace) = r["trace_id"].as_str() {
        field("Trace", trace.to_string());
    }
    let rows: Vec<Vec<String>> = r["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, a)| {
            vec![
                (i + 1).to_string(),
                s(&a["provider"]),
                s(&a["model"]),
                s(&a["outcome"]),
                ms(&a["start_ms"]),
                ms(&a["duration_ms"]),
            ]
        })
        .collect();
    out.push_str("Attempts\n");
    if rows.is_empty() {
        out.push_str("  none (answered by the gateway)\n");
    } else {
        for line in table(
            &["#", "PROVIDER", "MODEL", "OUTCOME", "START", "DURATION"],
            &rows,
        )
        .lines()
        {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// One Budget's row: namespace, name, period, spent, limit, remaining, resets, state.
pub fn budget_row(budget: &Value) -> Vec<String> {
    let spec = &budget["spec"];
    let status = &budget["status"];
    let limit = match (
        spec["limit"]["usd"].as_str(),
        spec["limit"]["tokens"].as_i64(),
    ) {
        (Some(usd), _) => format!("${usd}"),
        (None, Some(tokens)) => format!("{tokens} tokens"),
        _ => "-".into(),
    };
    let spent = match (
        status["spent"].as_str(),
        spec["limit"]["tokens"].is_i64(),
        status["spentTokens"].as_i64(),
    ) {
        (_, true, Some(tokens)) => format!("{tokens} tokens"),
        (Some(usd), _, _) => format!("${usd}"),
        _ => "-".into(),
    };
    let remaining = match (
        status["remaining"].as_str(),
        spec["limit"]["tokens"].is_i64(),
    ) {
        (Some(r), true) => format!("{r} tokens"),
        (Some(r), false) => format!("${r}"),
        (None, _) => "-".into(),
    };
    let state: Vec<String> = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] == "True")
        .map(|c| s(&c["type"]))
        .collect();
    vec![
        s(&budget["metadata"]["namespace"]),
        s(&budget["metadata"]["name"]),
        s(&spec["period"]),
        spent,
        limit,
        remaining,
        s(&status["periodEnd"]),
        if state.is_empty() {
            "-".into()
        } else {
            state.join(",")
        },
    ]
}

/// One workload's spend, summed over its sidecars.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WorkloadSpend {
    /// USD.
    pub usd: f64,
    /// Prompt tokens (cached reads and cache writes included).
    pub input_tokens: f64,
    /// Completion tokens (reasoning included).
    pub output_tokens: f64,
    /// Sidecars that reported it.
    pub sidecars: usize,
}

/// The labels and value of a Prometheus text sample line `name{labels} value`.
pub fn sample(line: &str, name: &str) -> Option<(BTreeMap<String, String>, f64)> {
    let rest = line.strip_prefix(name)?;
    let mut labels = BTreeMap::new();
    let value = match rest.strip_prefix('{') {
        None => rest,
        Some(mut r) => loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                break after;
            }
            let (key, after) = r.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            labels.insert(key.to_string(), value);
            r = after.get(end?..)?;
        },
    };
    if !value.starts_with(' ') {
        return None;
    }
    let value = value.split_whitespace().next()?.parse().ok()?;
    Some((labels, value))
}

/// Adds one sidecar's `/metrics` to the spend by (namespace, workload).
pub fn add_spend(metrics: &str, into: &mut BTreeMap<(String, String), WorkloadSpend>) {
    let mut seen: BTreeMap<(String, String), ()> = BTreeMap::new();
    for line in metrics.lines() {
        let (labels, value, usd) = if let Some((l, v)) = sample(line, "gatehouse_cost_usd_total") {
            (l, v, true)
        } else if let Some((l, v)) = sample(line, "gatehouse_tokens_total") {
            (l, v, false)
        } else {
            continue;
        };
        let key = (
            labels.get("namespace").cloned().unwrap_or_default(),
            labels.get("workload").cloned().unwrap_or_default(),
        );
        let entry = into.entry(key.clone()).or_default();
        if seen.insert(key, ()).is_none() {
            entry.sidecars += 1;
        }
        if usd {
            entry.usd += value;
        } else {
            match labels.get("type").map(String::as_str) {
                Some("input" | "cached_read" | "cache_write") => entry.input_tokens += value,
                Some("output" | "reasoning") => entry.output_tokens += value,
                _ => {}
            }
        }
    }
}

/// `kubectl gatehouse spend`: the Budgets, then the spend by workload.
pub fn spend(
    budgets: &[Value],
    workloads: &BTreeMap<(String, String), WorkloadSpend>,
    sidecars: usize,
    unreachable: &[String],
) -> String {
    let mut out = String::from("BUDGETS (status written by the operator from its ledger)\n");
    if budgets.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows: Vec<Vec<String>> = budgets.iter().map(budget_row).collect();
        out.push_str(&table(
            &[
                "NAMESPACE",
                "NAME",
                "PERIOD",
                "SPENT",
                "LIMIT",
                "REMAINING",
                "RESETS",
                "STATE",
            ],
            &rows,
        ));
    }
    let _ = writeln!(
        out,
        "\nSPEND BY WORKLOAD (since each sidecar started; from the metrics of {sidecars} sidecar{})",
        if sidecars == 1 { "" } else { "s" }
    );
    if workloads.is_empty() {
        out.push_str("  none yet\n");
    } else {
        let mut rows: Vec<(&(String, String), &WorkloadSpend)> = workloads.iter().collect();
        rows.sort_by(|a, b| b.1.usd.total_cmp(&a.1.usd).then(a.0.cmp(b.0)));
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|((ns, workload), w)| {
                vec![
                    ns.clone(),
                    workload.clone(),
                    format!("${:.6}", w.usd),
                    format!("{:.0}", w.input_tokens),
                    format!("{:.0}", w.output_tokens),
                    w.sidecars.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "NAMESPACE",
                "WORKLOAD",
                "USD",
                "INPUT TOKENS",
                "OUTPUT TOKENS",
                "SIDECARS",
            ],
            &rows,
        ));
    }
    for pod in unreachable {
        let _ = writeln!(out, "warning: could not read the metrics of {pod}");
    }
    out
}

/// One target of a Route as the Route lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTarget {
    /// Priority (lower first).
    pub priority: i32,
    /// Weight within the priority.
    pub weight: i32,
    /// ModelProvider.
    pub provider: String,
    /// Upstream model.
    pub model: String,
}

/// The targets in the order they are tried: priority ascending, then weight descending (the
/// share of traffic within a priority), then as listed.
pub fn chain_order(mut targets: Vec<ChainTarget>) -> Vec<ChainTarget> {
    targets.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    targets
}

/// One target's health over the sidecars that reported it.
pub fn health(route: &str, target: &ChainTarget, reports: &[Value]) -> String {
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    let mut detail = Vec::new();
    let mut seen = 0;
    for report in reports {
        let Some(entry) = report["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| {
                t["route"] == route
                    && t["provider"] == target.provider
                    && t["model"] == target.model
            })
        else {
            continue;
        };
        seen += 1;
        let state = s(&entry["state"]);
        if state == "ejected" {
            if let Some(ms) = entry["cooldown_remaining_ms"].as_u64() {
                detail.push(format!("cooldown {:.1}s", ms as f64 / 1000.0));
            }
            if let Some(reason) = entry["last_reason"].as_str() {
                detail.push(format!("ejected for {reason}"));
            }
        }
        *states.entry(state).or_default() += 1;
    }
    if seen == 0 {
        return format!(
            "unknown: no request on this route yet in {} sidecar{}",
            reports.len(),
            if reports.len() == 1 { "" } else { "s" }
        );
    }
    detail.sort();
    detail.dedup();
    let states: Vec<String> = states
        .iter()
        .map(|(state, n)| format!("{state} in {n}/{seen}"))
        .collect();
    if detail.is_empty() {
        states.join(", ")
    } else {
        format!("{} ({})", states.join(", "), detail.join(", "))
    }
}

/// `kubectl gatehouse failover <route>`.
pub fn failover(
    namespace: &str,
    route: &str,
    models: &[String],
    targets: &[ChainTarget],
    reports: &[Value],
) -> String {
    let mut out = format!(
        "Route {namespace}/{route} (models: {}), health from {} sidecar{}\n",
        if models.is_empty() {
            route.to_string()
        } else {
            models.join(", ")
        },
        reports.len(),
        if reports.len() == 1 { "" } else { "s" }
    );
    let rows: Vec<Vec<String>> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            vec![
                (i + 1).to_string(),
                t.priority.to_string(),
                t.weight.to_string(),
                t.provider.clone(),
                t.model.clone(),
                health(route, t, reports),
            ]
        })
        .collect();
    out.push_str(&table(
        &["#", "PRIORITY", "WEIGHT", "PROVIDER", "MODEL", "HEALTH"],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prometheus_samples_are_parsed_with_their_labels() {
        let (labels, v) = sample(
            r#"gatehouse_cost_usd_total{namespace="shop",workload="check\"out",tag="",route="chat"} 0.25"#,
            "gatehouse_cost_usd_total",
        )
        .unwrap();
        assert_eq!(v, 0.25);
        assert_eq!(labels["namespace"], "shop");
        assert_eq!(labels["workload"], "check\"out");
        assert_eq!(labels["tag"], "");
        assert_eq!(labels["route"], "chat");
        assert!(sample("gatehouse_cost_usd_created 1", "gatehouse_cost_usd_total").is_none());
        let mut spend = BTreeMap::new();
        add_spend(
            "# TYPE x counter\n\
             gatehouse_cost_usd_total{namespace=\"shop\",workload=\"a\",tag=\"t\"} 0.5\n\
             gatehouse_cost_usd_total{namespace=\"shop\",workload=\"a\",tag=\"u\"} 0.25\n\
             gatehouse_tokens_total{namespace=\"shop\",workload=\"a\",tag=\"t\",type=\"input\"} 10\n\
             gatehouse_tokens_total{namespace=\"shop\",workload=\"a\",tag=\"t\",type=\"cached_read\"} 5\n\
             gatehouse_tokens_total{namespace=\"shop\",workload=\"a\",tag=\"t\",type=\"output\"} 7\n",
            &mut spend,
        );
        add_spend(
            "gatehouse_cost_usd_total{namespace=\"shop\",workload=\"a\"} 1\n",
            &mut spend,
        );
        let a = &spend[&("shop".to_string(), "a".to_string())];
        assert_eq!(a.usd, 1.75);
        assert_eq!(a.input_tokens, 15.0);
        assert_eq!(a.output_tokens, 7.0);
        assert_eq!(a.sidecars, 2);
    }

    #[test]
    fn the_chain_is_in_priority_then_weight_order_with_health_per_sidecar() {
        let t = |priority, weight, provider: &str| ChainTarget {
            priority,
            weight,
            provider: provider.into(),
            model: "m".into(),
        };
        let ordered = chain_order(vec![t(1, 1, "c"), t(0, 10, "b"), t(0, 90, "a")]);
        let names: Vec<&str> = ordered.iter().map(|t| t.provider.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let reports = vec![
            json!({"targets": [{"route": "chat", "provider": "a", "model": "m", "state": "ejected",
                "cooldown_remaining_ms": 25000, "last_reason": "consecutive_failures"}]}),
            json!({"targets": [{"route": "chat", "provider": "a", "model": "m", "state": "healthy"}]}),
        ];
        let out = failover("shop", "chat", &["chat".into()], &ordered, &reports);
        assert!(
            out.contains(
                "ejected in 1/2, healthy in 1/2 (cooldown 25.0s, ejected for consecutive_failures)"
            ),
            "{out}"
        );
        assert!(
            out.contains("unknown: no request on this route yet"),
            "{out}"
        );
        let first = out.lines().nth(2).unwrap();
        assert!(first.starts_with("1  0"), "{out}");
    }

    #[test]
    fn a_request_record_is_rendered_with_its_attempts() {
        let record = json!({
            "request_id": "abc", "time_unix_ms": 0, "namespace": "shop", "workload": "checkout",
            "operation": "chat", "requested_model": "chat", "route": "chat", "rule": null,
            "provider": "secondary", "model": "backup",
            "attempts": [
                {"provider": "primary", "model": "p", "outcome": "server_error", "start_ms": 0.5, "duration_ms": 2.0},
                {"provider": "secondary", "model": "backup", "outcome": "success", "start_ms": 12.0, "duration_ms": 3.0}
            ],
            "tokens": {"input": 3, "output": 4, "cached_read": 0, "cache_write": 0, "reasoning": 0, "estimated": false},
            "cost_usd": 0.0001, "cache": "bypass",
            "budget": {"outcome": "ok", "budgets": ["team"], "downgraded_to": null},
            "rate_limit": null, "status": 200, "end": "answered", "error": null,
            "timings": {"duration_ms": 15.0, "response_head_ms": 15.0, "upstream_ms": 5.0, "gateway_overhead_ms": 10.0}
        });
        let out = request(&record, "shop/app-1");
        assert!(out.contains("Answered by secondary / backup"), "{out}");
        assert!(out.contains("Cost        $0.00010000"), "{out}");
        assert!(out.contains("Budget      ok (team)"), "{out}");
        assert!(out.contains("1  primary    p       server_error"), "{out}");
        assert!(
            out.contains("Time        1970-01-01T00:00:00.000Z"),
            "{out}"
        );
    }
}
