//! Department identity on the registry's gRPC calls: with credentials configured, the caller's
//! token — not a field it fills in — decides which department it acts for, and only
//! administrators change schemas and policies.

use kakehashi_proto::v1::*;
use kakehashi_tests::services::registry_config;
use kakehashi_tests::{NatsServer, Registry};
use tonic::Code;

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    r
}

fn subscription(department: &str) -> CreateSubscriptionRequest {
    CreateSubscriptionRequest {
        subscription: Some(Subscription {
            department: department.into(),
            name: "s".into(),
            type_pattern: "health.>".into(),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn tokens_decide_who_acts_and_only_admins_change_schemas_and_policies() {
    let nats = NatsServer::start();
    let mut cfg = registry_config(&nats);
    cfg.credentials.insert("tok-admin".into(), "digital-agency".into());
    cfg.credentials.insert("tok-mhlw".into(), "mhlw".into());
    cfg.credentials.insert("tok-nta".into(), "nta".into());
    cfg.admins = vec!["digital-agency".into()];
    let registry = Registry::start(cfg).await;
    let channel = tonic::transport::Channel::from_shared(registry.endpoint())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut schemas = schema_registry_client::SchemaRegistryClient::new(channel.clone());
    let mut policies = policies_client::PoliciesClient::new(channel.clone());
    let mut subs = subscriptions_client::SubscriptionsClient::new(channel.clone());
    let mut delivery = delivery_client::DeliveryClient::new(channel);

    let schema = RegisterSchemaRequest {
        subject: "health.check.done".into(),
        schema: r#"{"type":"object"}"#.into(),
        ..Default::default()
    };
    let anonymous = schemas.register_schema(schema.clone()).await.expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let unknown = schemas.register_schema(with_token(schema.clone(), "forged")).await.expect_err("bad token");
    assert_eq!(unknown.code(), Code::Unauthenticated);
    let not_admin =
        schemas.register_schema(with_token(schema.clone(), "tok-mhlw")).await.expect_err("not admin");
    assert_eq!(not_admin.code(), Code::PermissionDenied);
    schemas.register_schema(with_token(schema, "tok-admin")).await.expect("admin registers");

    let policy = Policy {
        type_pattern: "health.>".into(),
        producers: vec!["city-shibuya".into()],
        readers: vec!["mhlw".into(), "nta".into()],
        raw_pii_readers: vec![],
    };
    let refused = policies.put_policy(with_token(policy.clone(), "tok-mhlw")).await.expect_err("not admin");
    assert_eq!(refused.code(), Code::PermissionDenied);
    policies.put_policy(with_token(policy, "tok-admin")).await.expect("admin puts policy");

    // nta may read health.> but may not create a subscription in mhlw's name.
    let impersonation =
        subs.create_subscription(with_token(subscription("mhlw"), "tok-nta")).await.expect_err("as mhlw");
    assert_eq!(impersonation.code(), Code::PermissionDenied);
    subs.create_subscription(with_token(subscription("mhlw"), "tok-mhlw")).await.expect("own subscription");

    // nor open mhlw's stream.
    let open = SubscribeRequest {
        request: Some(subscribe_request::Request::Open(OpenSubscription {
            subscription: "s".into(),
            department: "mhlw".into(),
            max_in_flight: 1,
        })),
    };
    let stolen = delivery
        .subscribe(with_token(tokio_stream::iter(vec![open.clone()]), "tok-nta"))
        .await
        .expect_err("nta opening mhlw's subscription");
    assert_eq!(stolen.code(), Code::PermissionDenied);
    delivery
        .subscribe(with_token(tokio_stream::iter(vec![open]), "tok-mhlw"))
        .await
        .expect("mhlw opens its own");
}
