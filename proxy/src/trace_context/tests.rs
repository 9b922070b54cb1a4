use super::*;

fn get<'a>(h: &'a HeaderMap, n: &str) -> &'a str {
    h.get(n).unwrap().to_str().unwrap()
}

#[test]
fn w3c_keeps_trace_id_and_flags_with_a_new_parent() {
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    h.insert("tracestate", "vendor=x".parse().unwrap());
    let ids = propagate(&mut h, 0.0);
    assert_eq!(ids.trace_id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
    let tp = get(&h, "traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(tp.ends_with("-01"), "{tp}");
    assert_ne!(&tp[36..52], "00f067aa0ba902b7", "span id must change");
    assert_eq!(get(&h, "tracestate"), "vendor=x");
}

#[test]
fn invalid_traceparent_restarts_the_trace() {
    let mut h = HeaderMap::new();
    h.insert(
        "traceparent",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    h.insert("tracestate", "vendor=x".parse().unwrap());
    let ids = propagate(&mut h, 0.0);
    assert!(h.get("tracestate").is_none());
    let tp = get(&h, "traceparent");
    assert_eq!(&tp[3..35], ids.trace_id.as_str());
    assert!(tp.ends_with("-00"));
}

#[test]
fn b3_single_and_multi_get_a_new_span_with_the_old_as_parent() {
    let mut h = HeaderMap::new();
    h.insert(
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
            .parse()
            .unwrap(),
    );
    h.insert(
        "x-b3-traceid",
        "80f198ee56343ba864fe8b2a57d3eff7".parse().unwrap(),
    );
    h.insert("x-b3-spanid", "e457b5a2e4d86bd1".parse().unwrap());
    let ids = propagate(&mut h, 0.0);
    assert_eq!(ids.trace_id.as_str(), "80f198ee56343ba864fe8b2a57d3eff7");
    let b3 = get(&h, "b3");
    let parts: Vec<&str> = b3.split('-').collect();
    assert_eq!(parts[0], "80f198ee56343ba864fe8b2a57d3eff7");
    assert_ne!(parts[1], "e457b5a2e4d86bd1");
    assert_eq!(parts[2], "1");
    assert_eq!(parts[3], "e457b5a2e4d86bd1");
    assert_eq!(get(&h, "x-b3-parentspanid"), "e457b5a2e4d86bd1");
    assert_ne!(get(&h, "x-b3-spanid"), "e457b5a2e4d86bd1");
    assert_eq!(get(&h, "x-b3-spanid"), parts[1], "one span id for this hop");
    // B3-only requests do not get a W3C header invented for them.
    assert!(h.get("traceparent").is_none());
}

#[test]
fn request_id_added_when_missing_and_kept_otherwise() {
    let mut h = HeaderMap::new();
    let ids = propagate(&mut h, 0.0);
    let rid = get(&h, "x-request-id");
    assert_eq!(rid.len(), 36);
    assert_eq!(&rid[14..15], "4", "uuid v4");
    assert_eq!(ids.request_id, rid);
    assert!(
        h.get("traceparent").is_some(),
        "a new trace starts at the edge"
    );

    let mut h = HeaderMap::new();
    h.insert("x-request-id", "abc".parse().unwrap());
    assert_eq!(propagate(&mut h, 0.0).request_id, "abc");
}

#[test]
fn generated_values_are_never_indexed_and_ids_match_the_headers() {
    let mut h = HeaderMap::new();
    let ids = propagate(&mut h, 0.0);
    // Unique per request: HPACK must not put them in the connection's header table.
    assert!(h["traceparent"].is_sensitive());
    assert!(h["x-request-id"].is_sensitive());
    assert_eq!(ids.request_id, get(&h, "x-request-id"));
    assert_eq!(ids.request_id.to_header_value(), h["x-request-id"]);
    let tp = get(&h, "traceparent");
    assert_eq!(ids.trace_id.as_str(), &tp[3..35]);

    // A received id is kept as is, and not marked.
    let mut h = HeaderMap::new();
    h.insert("x-request-id", "req-1".parse().unwrap());
    let ids = propagate(&mut h, 0.0);
    assert_eq!(ids.request_id, "req-1");
    assert!(!h["x-request-id"].is_sensitive());
}

#[test]
fn the_span_follows_the_sampled_flag_and_the_callers_span_is_its_parent() {
    for (flags, sampled) in [("01", true), ("00", false), ("03", true)] {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}")
                .parse()
                .unwrap(),
        );
        // The ratio does not override a caller's decision.
        let ids = propagate(&mut h, if sampled { 0.0 } else { 1.0 });
        assert_eq!(ids.span.sampled, sampled, "flags {flags}");
        assert_eq!(ids.span.parent, Some(0xb7ad6b7169203331u64.to_be_bytes()));
        assert_eq!(
            ids.span.trace.to_bytes(),
            0x0af7651916cd43dd8448eb211c80319cu128.to_be_bytes()
        );
        let tp = get(&h, "traceparent");
        let own = u64::from_str_radix(&tp[36..52], 16).unwrap();
        assert_eq!(
            own.to_be_bytes(),
            ids.span.span,
            "the next hop's parent is this span"
        );
    }
}

#[test]
fn a_new_trace_is_sampled_by_the_ratio_and_says_so_downstream() {
    let mut h = HeaderMap::new();
    let ids = propagate(&mut h, 1.0);
    assert!(ids.span.sampled);
    assert_eq!(ids.span.parent, None);
    assert!(get(&h, "traceparent").ends_with("-01"));
    let mut h = HeaderMap::new();
    let ids = propagate(&mut h, 0.0);
    assert!(!ids.span.sampled);
    assert!(get(&h, "traceparent").ends_with("-00"));
}

#[test]
fn b3_sampling_fields_and_short_trace_ids() {
    let mut h = HeaderMap::new();
    h.insert("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0".parse().unwrap());
    let ids = propagate(&mut h, 1.0);
    assert!(!ids.span.sampled);
    assert_eq!(
        ids.span.trace.to_bytes(),
        0xa3ce929d0e0e4736u128.to_be_bytes(),
        "a 64-bit id is left-padded"
    );
    assert_eq!(ids.span.parent, Some(0x00f067aa0ba902b7u64.to_be_bytes()));
    let mut h = HeaderMap::new();
    h.insert("x-b3-traceid", "a3ce929d0e0e4736".parse().unwrap());
    h.insert("x-b3-spanid", "00f067aa0ba902b7".parse().unwrap());
    h.insert("x-b3-sampled", "1".parse().unwrap());
    assert!(propagate(&mut h, 0.0).span.sampled);
    // No decision: the ratio decides, and the next hop is told.
    for (ratio, field) in [(1.0, "1"), (0.0, "0")] {
        let mut h = HeaderMap::new();
        h.insert("b3", "a3ce929d0e0e4736-00f067aa0ba902b7".parse().unwrap());
        assert_eq!(propagate(&mut h, ratio).span.sampled, ratio == 1.0);
        assert_eq!(get(&h, "b3").split('-').nth(2), Some(field));
    }
}
