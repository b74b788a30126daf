//! Who may call what, for every RPC in the descriptor set, against a real
//! `munity dev`: through its gateway and at each service directly. The
//! rule is the one each method declares (`callers`, `scopes` in
//! `munity.options.v1.method`), and a method without a declaration fails
//! this test.
//!
//! The calls carry an empty request: what matters is whether the caller
//! got past the door (PERMISSION_DENIED or not), not what the method then
//! makes of the empty message.

use bytes::Bytes;
use munity_platform::policy::MethodPolicy;
use munity_testkit::{ADMIN_EMAIL, raw_grpc, register_as, start_dev};
use tonic::Code;

fn policy() -> MethodPolicy {
    MethodPolicy::from_descriptor_sets(&[munity_proto::FILE_DESCRIPTOR_SET]).unwrap()
}

#[test]
fn every_protected_method_declares_its_callers() {
    let policy = policy();
    let undeclared: Vec<&String> = policy
        .caller_rules()
        .iter()
        .filter(|(_, rule)| !rule.declared)
        .map(|(path, _)| path)
        .collect();
    assert!(
        undeclared.is_empty(),
        "declare `callers` in (munity.options.v1.method) for {undeclared:?}"
    );
    // Service methods name the scope they need.
    for (path, rule) in policy.caller_rules() {
        assert!(
            !rule.services || !rule.scopes.is_empty(),
            "{path} accepts service tokens but names no scope"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_admits_exactly_the_callers_it_declares() {
    let policy = policy();
    let data = tempfile::tempdir().unwrap();
    let (ready, gateway) = start_dev(env!("CARGO_BIN_EXE_munity"), data.path()).await;
    let (admin, _) = register_as(&gateway, "Admin", ADMIN_EMAIL).await;
    let every_scope = policy.declared_scopes();
    // Service accounts have 1 to 16 scopes: this one's grants nothing.
    let no_scope =
        munity_testkit::service_token(&gateway, &admin, "no-scope", &["audit.none"]).await;
    let all_scopes =
        munity_testkit::service_token(&gateway, &admin, "all-scopes", &every_scope).await;

    let mut direct = std::collections::BTreeMap::new();
    for service in policy.services() {
        let channel = tonic::transport::Channel::from_shared(format!(
            "http://{}",
            ready.address(&service.upstream)
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
        direct.insert(service.name.clone(), channel);
    }

    let mut checked = 0;
    let mut failures = Vec::new();
    for (path, rule) in policy.caller_rules() {
        let service = path.trim_start_matches('/').split('/').next().unwrap();
        let Some(service_channel) = direct.get(service) else {
            continue;
        };
        for (door, channel) in [("gateway", &gateway), ("service", service_channel)] {
            let expect = |who: &str, token: &str, admitted: bool| {
                let token = token.to_owned();
                let channel = channel.clone();
                let path = path.clone();
                let who = who.to_owned();
                async move {
                    let code =
                        match raw_grpc::call(&channel, &path, Some(&token), Bytes::new()).await {
                            Ok(_) => Code::Ok,
                            Err(status) => status.code(),
                        };
                    let refused = code == Code::PermissionDenied || code == Code::Unauthenticated;
                    (refused == admitted).then(|| {
                        format!(
                            "{door} {path} as {who}: got {code:?}, expected {}",
                            if admitted {
                                "to get past the door"
                            } else {
                                "PERMISSION_DENIED"
                            }
                        )
                    })
                }
            };
            for failure in [
                expect("a service token without the scope", &no_scope, false).await,
                expect(
                    "a service token with every scope",
                    &all_scopes,
                    rule.services,
                )
                .await,
                expect("an admin user", &admin, rule.users).await,
            ]
            .into_iter()
            .flatten()
            {
                failures.push(failure);
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 2 * 40, "only {checked} method doors checked");
}
