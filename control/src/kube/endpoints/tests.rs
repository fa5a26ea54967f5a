use super::*;

/// An EndpointSlice as the API documentation shows one (discovery.k8s.io/v1), with one
/// endpoint in each state.
fn slice() -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "reviews-abc",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "reviews"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 9080}, {"name": "metrics", "port": 9090}],
        "endpoints": [
            {"addresses": ["10.1.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false},
             "targetRef": {"kind": "Pod", "namespace": "shop", "name": "reviews-1", "uid": "u1"}},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": false, "terminating": false},
             "targetRef": {"kind": "Pod", "namespace": "shop", "name": "reviews-2", "uid": "u2"}},
            {"addresses": ["10.1.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true},
             "targetRef": {"kind": "Pod", "namespace": "shop", "name": "reviews-3", "uid": "u3"}},
            {"addresses": ["10.1.0.4"], "targetRef": {"kind": "Pod", "name": "reviews-4", "uid": "u4"}},
        ],
    }))
    .unwrap()
}

fn table_with(trust_domain: Option<&str>) -> EndpointTable {
    let table = EndpointTable::new(trust_domain.map(str::to_owned));
    let slice = Slice::from_api(&slice()).unwrap();
    assert!(table.replace(vec![(("shop".into(), "reviews-abc".into()), slice)]));
    table
}

fn addresses(ready: &[Ready]) -> Vec<String> {
    ready.iter().map(|r| r.address.to_string()).collect()
}

#[test]
fn ready_and_unset_are_pushed_not_ready_and_terminating_are_not() {
    let table = table_with(None);
    let by_name = table.ready("shop", "reviews", &PortRef::Name("http".into()));
    assert_eq!(addresses(&by_name), ["10.1.0.1:9080", "10.1.0.4:9080"]);
    let by_number = table.ready("shop", "reviews", &PortRef::Number(9090));
    assert_eq!(addresses(&by_number), ["10.1.0.1:9090", "10.1.0.4:9090"]);
    assert!(table
        .ready("shop", "reviews", &PortRef::Name("grpc".into()))
        .is_empty());
    assert!(table
        .ready("other", "reviews", &PortRef::Number(9080))
        .is_empty());
}

#[test]
fn a_slice_without_its_service_label_or_with_host_names_is_not_followed() {
    let mut unlabelled = slice();
    unlabelled.metadata.labels = None;
    assert!(Slice::from_api(&unlabelled).is_none());
    let mut fqdn = slice();
    fqdn.address_type = "FQDN".into();
    assert!(Slice::from_api(&fqdn).is_none());
}

#[test]
fn unchanged_slices_are_no_change() {
    let table = table_with(None);
    let key = ("shop".to_owned(), "reviews-abc".to_owned());
    assert!(!table.apply(key.clone(), Slice::from_api(&slice()).unwrap()));
    assert!(table.remove(&key));
    assert!(!table.remove(&key));
}

fn service(tls: Value) -> Value {
    json!({
        "apiVersion": "strait.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"protocol": "http1", "discovery": "kubernetes",
                 "kubernetes": {"service": "reviews", "port": "http"}, "tls": tls},
    })
}

#[test]
fn a_discovered_service_is_rendered_static() {
    let table = table_with(None);
    let mut doc = service(Value::Null);
    doc["spec"].as_object_mut().unwrap().remove("tls");
    let rendered = render(&doc, Some(&table));
    assert_eq!(
        rendered["spec"],
        json!({"protocol": "http1", "endpoints": [{"address": "10.1.0.1:9080"}, {"address": "10.1.0.4:9080"}]})
    );
    let without_cluster = render(&doc, None);
    assert_eq!(without_cluster["spec"]["endpoints"], json!([]));
}

#[test]
fn mesh_services_expect_their_pods_service_accounts() {
    let table = table_with(Some("cluster.local"));
    let pod = |name: &str, uid: &str| PodRef {
        namespace: "shop".into(),
        name: name.into(),
        uid: uid.into(),
    };
    table.set_account(pod("reviews-1", "u1"), "reviews".into());
    let rendered = render(&service(json!({"mode": "mesh"})), Some(&table));
    assert_eq!(
        rendered["spec"]["tls"],
        json!({"mode": "mesh", "identities": ["spiffe://cluster.local/ns/shop/sa/reviews"]})
    );
    assert_eq!(
        rendered["spec"]["endpoints"],
        json!([{"address": "10.1.0.1:9080"}]),
        "an endpoint whose identity is unknown is left out"
    );
    let named = service(json!({"mode": "mesh", "identities": ["spiffe://x/ns/a/sa/b"]}));
    let rendered = render(&named, Some(&table));
    assert_eq!(rendered["spec"]["tls"], named["spec"]["tls"]);
    assert_eq!(
        rendered["spec"]["endpoints"].as_array().map(Vec::len),
        Some(2)
    );
}
