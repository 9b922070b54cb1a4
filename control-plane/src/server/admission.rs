//! admission.k8s.io/v1 `AdmissionReview` in, `AdmissionReview` out: the webhook's answer to one request,
//! without I/O (the listener is `super::webhook`).
//!
//! Every answer to a well-formed review echoes `request.uid`. An injected pod, and a pod left alone, are
//! `allowed: true` with `patchType: JSONPatch` and a base64 patch (`[]` when nothing changes); a pod whose
//! `shoal.io/` label or annotations are invalid is `allowed: false` with a message naming the bad one.

use serde_json::{Value, json};

use crate::inject::{Injector, Outcome};

/// The result of one review, for the log and `shoal_cp_injections_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The sidecar was added.
    Injected,
    /// Allowed unchanged (opted out, skipped, already injected, not a pod creation).
    Skipped,
    /// Refused: a bad `shoal.io/` label or annotation.
    Denied,
}

impl Verdict {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
        }
    }
}

/// The answer to a review (`Ok`), or why the body is not one (`Err`: HTTP 400).
pub(crate) fn review(
    body: &[u8],
    injector: &Injector,
    trust_anchors: &str,
) -> Result<(Value, Verdict, String), String> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || review.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err("expected an admission.k8s.io/v1 AdmissionReview".to_owned());
    }
    let request = review
        .get("request")
        .ok_or("the AdmissionReview has no request")?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or("the AdmissionReview's request has no uid")?;
    let is_pod = request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod")
        && request.pointer("/kind/group").and_then(Value::as_str) == Some("");
    let operation = request.get("operation").and_then(Value::as_str);
    // The webhook configuration only sends pod creations; anything else is let through untouched.
    if !is_pod || operation != Some("CREATE") {
        let what = format!("not a pod creation ({operation:?})");
        return Ok((allowed(uid, &[], &[]), Verdict::Skipped, what));
    }
    let pod = request
        .get("object")
        .ok_or("the AdmissionReview's request has no object")?;
    // A pod created from a template has no metadata.namespace yet: the request names it.
    let namespace = (request.get("namespace").and_then(Value::as_str))
        .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str));
    let subject = format!(
        "{}/{}",
        namespace.unwrap_or("?"),
        (pod.pointer("/metadata/name").and_then(Value::as_str))
            .or_else(|| pod
                .pointer("/metadata/generateName")
                .and_then(Value::as_str))
            .unwrap_or("?")
    );
    Ok(match injector.inject(pod, namespace, trust_anchors) {
        Ok(Outcome::Inject(ops)) => (allowed(uid, &ops, &[]), Verdict::Injected, subject),
        Ok(Outcome::Skip { reason, warning }) => {
            let warnings: Vec<String> = warning.into_iter().collect();
            let answer = allowed(uid, &[], &warnings);
            (answer, Verdict::Skipped, format!("{subject}: {reason}"))
        }
        Err(denied) => {
            let message = format!("shoal sidecar injector: {denied}");
            let answer = envelope(json!({
                "uid": uid,
                "allowed": false,
                "status": {"code": 400, "reason": "BadRequest", "message": message},
            }));
            (answer, Verdict::Denied, format!("{subject}: {denied}"))
        }
    })
}

fn allowed(uid: &str, ops: &[Value], warnings: &[String]) -> Value {
    let patch = serde_json::to_vec(ops).unwrap_or_else(|_| b"[]".to_vec());
    let mut response = json!({
        "uid": uid,
        "allowed": true,
        "patchType": "JSONPatch",
        "patch": base64(&patch),
    });
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    envelope(response)
}

fn envelope(response: Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// Standard base64 with padding (RFC 4648), as `AdmissionResponse.patch` is a `[]byte` in JSON.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::{ControlPlaneRef, Template};

    fn injector() -> Injector {
        Injector::new(Template::default(), &ControlPlaneRef::default()).unwrap()
    }

    fn request(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "operation": "CREATE",
                "object": object,
            },
        }))
        .unwrap()
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("[]", "W10="),
        ] {
            assert_eq!(base64(input.as_bytes()), output, "{input}");
        }
    }

    #[test]
    fn answers_echo_the_uid_and_carry_a_patch_or_a_refusal() {
        let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}]}});
        let (answer, verdict, _) = review(&request(pod), &injector(), "PEM").unwrap();
        assert_eq!(verdict, Verdict::Injected);
        let response = &answer["response"];
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        assert!(response["patch"].as_str().unwrap().len() > 100);

        let opted_out =
            json!({"metadata": {"annotations": {"shoal.io/inject": "disabled"}}, "spec": {}});
        let (answer, verdict, _) = review(&request(opted_out), &injector(), "PEM").unwrap();
        assert_eq!(verdict, Verdict::Skipped);
        assert_eq!(answer["response"]["patch"], "W10=", "an empty patch");

        let bad =
            json!({"metadata": {"annotations": {"shoal.io/proxy-cpu-limit": "x"}}, "spec": {}});
        let (answer, verdict, _) = review(&request(bad), &injector(), "PEM").unwrap();
        assert_eq!(verdict, Verdict::Denied);
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains("shoal.io/proxy-cpu-limit"), "{message}");

        assert!(review(b"{", &injector(), "PEM").is_err());
        assert!(review(b"{\"kind\": \"Pod\"}", &injector(), "PEM").is_err());
    }
}
