//! A route backend's `port` picks that port of a multi-port backend service, through the real control
//! plane and a discovery-fed proxy: `/admin` goes to `api`'s port 9090 endpoint, the rest to `api`'s port
//! 80 endpoint (the request's port); `/config` shows the port called; a port `api` lacks is refused at
//! `shoalctl apply`, naming the field, and the route in force keeps serving.

use std::net::SocketAddr;

use shoal_tests::HttpBackend;
use shoal_tests::backend::text_response;
use shoal_tests::control_plane::{ControlPlaneBuilder, MeshClient, service_yaml};

async fn named(name: &'static str) -> HttpBackend {
    HttpBackend::respond(move |_| text_response(200, name)).await
}

/// `api` with ports 80 and 9090, one endpoint for each.
fn api_yaml(http: SocketAddr, admin: SocketAddr) -> String {
    let registration = |name: &str, at: SocketAddr, port: u16| {
        format!(
            "---\nkind: EndpointRegistration\nmetadata: {{name: {name}}}\nspec: {{service: api, address: {}, port: {}, service_port: {port}}}\n",
            at.ip(),
            at.port()
        )
    };
    format!(
        "kind: Service\nmetadata: {{name: api}}\nspec:\n  ports: [{{name: http, port: 80}}, {{name: admin, port: 9090}}]\n{}{}",
        registration("api-http", http, 80),
        registration("api-admin", admin, 9090)
    )
}

/// `web`'s route: `/admin` to `api` on `admin_port`, the rest to `api` on the request's port.
fn route_yaml(admin_port: u16) -> String {
    format!(
        "kind: Route\nmetadata: {{name: web}}\nspec:\n  parent_service: web\n  rules:\n  \
         - matches: [{{path: {{prefix: /admin}}}}]\n    backends: [{{service: api, port: {admin_port}}}]\n  \
         - backends: [{{service: api}}]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_port_picks_that_port_of_the_backend_service() {
    let web = named("web").await;
    let api_http = named("api-http").await;
    let api_admin = named("api-admin").await;
    let cp = ControlPlaneBuilder::new().start().await;
    let applied = cp
        .apply(&format!(
            "{}---\n{}---\n{}",
            service_yaml("web", 80, &[web.addr()]),
            api_yaml(api_http.addr(), api_admin.addr()),
            route_yaml(9090)
        ))
        .await;
    assert!(
        applied.stdout.contains("route/web.default created"),
        "{applied:?}"
    );
    let proxy = cp.proxy_builder("ports-proxy").start().await;
    let mut client = MeshClient::new(proxy.outbound());

    for _ in 0..10 {
        let admin = client.get("web", "/admin/users").await.unwrap();
        assert_eq!(admin.text(), "api-admin");
        let other = client.get("web", "/orders").await.unwrap();
        assert_eq!(other.text(), "api-http");
    }
    assert_eq!(
        web.count(),
        0,
        "the route sends nothing to web's own endpoint"
    );
    assert_eq!((api_admin.count(), api_http.count()), (10, 10));

    // `/config` shows the port each backend is called on.
    let config = proxy.config().await;
    let rules: Vec<_> = (config["state"]["routes"].as_array().unwrap().iter())
        .flat_map(|rules| rules.as_array().unwrap())
        .filter(|rule| rule["backends"][0]["service"] == "api.default")
        .collect();
    let ports: Vec<_> = rules
        .iter()
        .map(|r| r["backends"][0]["port"].clone())
        .collect();
    assert_eq!(ports, [9090, 80], "{rules:?}");

    // A port `api` does not have is refused at apply, naming the field; the route in force keeps serving.
    let refused = cp.ctl(&["apply", "-f", "-"], Some(&route_yaml(9091))).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("spec.rules[0].backends[0].port: service api.default has no port 9091"),
        "{refused:?}"
    );
    let admin = client.get("web", "/admin").await.unwrap();
    assert_eq!(admin.text(), "api-admin");
}
