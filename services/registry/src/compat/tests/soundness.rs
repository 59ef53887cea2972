//! Property-based soundness: whenever the checker calls a new schema BACKWARD-compatible with
//! an old one, every instance valid under the old schema must be valid under the new one.
//!
//! Old schemas come from a small grammar (types, `properties`/`required`,
//! `additionalProperties`/`unevaluatedProperties`, `prefixItems`/`items`/`unevaluatedItems`,
//! bounds, `enum`); new schemas are the old ones with one or two random edits, so that many
//! pairs are compatible. Instances are generated guided by the old schema and then filtered
//! by the real validator (draft 2020-12, as `store::compile` sets it up). The seed is fixed so
//! the test is reproducible; raise `PROPTEST_CASES` to search longer.

use proptest::prelude::*;
use proptest::sample::{select, subsequence, Index};
use proptest::test_runner::{Config, RngSeed};
use serde_json::{json, Map, Value};

use super::backward;

const NAMES: &[&str] = &["a", "b", "c"];
const TYPES: &[&str] = &["string", "number", "integer", "boolean", "null", "array", "object"];

fn scalar_pool() -> Vec<Value> {
    vec![
        json!("a"),
        json!("ab"),
        json!(""),
        json!(0),
        json!(1),
        json!(2),
        json!(1.5),
        json!(-1),
        json!(true),
        json!(null),
    ]
}

fn obj(pairs: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(pairs.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))).collect())
}

/// A schema without subschemas.
fn leaf() -> BoxedStrategy<Value> {
    let bound = || proptest::option::of(-1i64..3);
    let count = || proptest::option::of(0u64..3);
    prop_oneof![
        Just(json!({})),
        Just(json!(false)),
        select(TYPES).prop_map(|t| json!({"type": t})),
        subsequence(TYPES, 2..3).prop_map(|ts| json!({"type": ts})),
        (select(&["number", "integer"][..]), bound(), bound(), bound()).prop_map(|(t, mn, mx, emn)| obj(
            vec![
                ("type", Some(json!(t))),
                ("minimum", mn.map(Value::from)),
                ("maximum", mx.map(Value::from)),
                ("exclusiveMinimum", emn.map(Value::from)),
            ]
        )),
        (count(), count()).prop_map(|(mn, mx)| obj(vec![
            ("type", Some(json!("string"))),
            ("minLength", mn.map(Value::from)),
            ("maxLength", mx.map(Value::from)),
        ])),
        (subsequence(scalar_pool(), 1..4), proptest::option::of(select(TYPES)))
            .prop_map(|(e, t)| obj(vec![("enum", Some(Value::Array(e))), ("type", t.map(Value::from))])),
    ]
    .boxed()
}

fn closing(inner: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    proptest::option::of(prop_oneof![Just(json!(false)), inner]).boxed()
}

fn object_schema(inner: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    (
        proptest::collection::btree_map(select(NAMES), inner.clone(), 0..3),
        subsequence(NAMES, 0..3),
        closing(inner),
        any::<bool>(),
        proptest::option::of(0u64..3),
    )
        .prop_map(|(props, required, extra, unevaluated, max)| {
            let props: Map<String, Value> = props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let extra_key = if unevaluated { "unevaluatedProperties" } else { "additionalProperties" };
            obj(vec![
                ("type", Some(json!("object"))),
                ("properties", Some(Value::Object(props))),
                ("required", (!required.is_empty()).then(|| json!(required))),
                (extra_key, extra),
                ("maxProperties", max.map(Value::from)),
            ])
        })
        .boxed()
}

fn array_schema(inner: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    (
        proptest::collection::vec(inner.clone(), 0..4),
        closing(inner.clone()),
        proptest::option::of(0u64..3),
        proptest::option::of(0u64..4),
        closing(inner),
    )
        .prop_map(|(prefix, items, min, max, unevaluated)| {
            obj(vec![
                ("type", Some(json!("array"))),
                ("prefixItems", (!prefix.is_empty()).then_some(Value::Array(prefix))),
                ("items", items),
                ("minItems", min.map(Value::from)),
                ("maxItems", max.map(Value::from)),
                ("unevaluatedItems", unevaluated),
            ])
        })
        .boxed()
}

fn schema() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(
            3,
            24,
            4,
            |inner| prop_oneof![2 => object_schema(inner.clone()), 2 => array_schema(inner)],
        )
        .boxed()
}

/// JSON pointers (as key paths) of every subschema, the root included.
fn schema_paths(v: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(here.clone());
    let Some(m) = v.as_object() else { return };
    for (k, sub) in m {
        match (k.as_str(), sub) {
            ("properties", Value::Object(props)) => {
                for (name, s) in props {
                    here.extend([k.clone(), name.clone()]);
                    schema_paths(s, here, out);
                    here.truncate(here.len() - 2);
                }
            }
            ("prefixItems", Value::Array(list)) => {
                for (i, s) in list.iter().enumerate() {
                    here.extend([k.clone(), i.to_string()]);
                    schema_paths(s, here, out);
                    here.truncate(here.len() - 2);
                }
            }
            ("items" | "additionalProperties" | "unevaluatedProperties" | "unevaluatedItems", s) => {
                here.push(k.clone());
                schema_paths(s, here, out);
                here.pop();
            }
            _ => {}
        }
    }
}

fn at_mut<'v>(v: &'v mut Value, path: &[String]) -> &'v mut Value {
    path.iter().fold(v, |v, k| match v {
        Value::Object(m) => m.get_mut(k).expect("path exists"),
        Value::Array(a) => &mut a[k.parse::<usize>().expect("index")],
        _ => unreachable!("paths only lead through containers"),
    })
}

/// One random edit of a subschema.
#[derive(Debug, Clone)]
struct Edit {
    at: Index,
    op: u8,
    key: Index,
    number: u64,
    fresh: Value,
}

fn edit() -> impl Strategy<Value = Edit> {
    (any::<Index>(), 0u8..6, any::<Index>(), 0u64..4, schema())
        .prop_map(|(at, op, key, number, fresh)| Edit { at, op, key, number, fresh })
}

fn apply(mut v: Value, e: &Edit) -> Value {
    let mut paths = Vec::new();
    schema_paths(&v, &mut Vec::new(), &mut paths);
    let node = at_mut(&mut v, &paths[e.at.index(paths.len())]);
    let bounds = ["minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "maxProperties"];
    match (e.op, node) {
        (0, node) => *node = e.fresh.clone(),
        (1, Value::Object(m)) if !m.is_empty() => {
            let k = m.keys().nth(e.key.index(m.len())).cloned().expect("key");
            m.remove(&k);
        }
        (2, Value::Object(m)) => {
            m.insert(e.key.get(&bounds).to_string(), Value::from(e.number));
        }
        (3, Value::Object(m)) => match m.get_mut("prefixItems") {
            Some(Value::Array(list)) if e.number.is_multiple_of(2) => {
                list.pop();
                if list.is_empty() {
                    m.remove("prefixItems");
                }
            }
            Some(Value::Array(list)) => list.push(e.fresh.clone()),
            _ => {}
        },
        (4, Value::Object(m)) => {
            let name = e.key.get(NAMES);
            if e.number.is_multiple_of(2) {
                m.insert("required".into(), json!([name]));
            } else if let Some(Value::Object(props)) = m.get_mut("properties") {
                props.insert((*name).to_owned(), e.fresh.clone());
            }
        }
        (5, Value::Object(m)) => {
            m.insert("type".into(), json!(e.key.get(TYPES)));
        }
        _ => {}
    }
    v
}

/// Candidate instances shaped by `s` (most, not all, are valid under it).
fn instance_for(s: &Value, depth: u32) -> BoxedStrategy<Value> {
    let any_scalar = select(scalar_pool()).boxed();
    if depth == 0 {
        return any_scalar;
    }
    let Some(m) = s.as_object() else {
        return prop_oneof![any_scalar, instance_for(&json!({"type": "array"}), depth - 1)].boxed();
    };
    if let Some(Value::Array(e)) = m.get("enum") {
        if !e.is_empty() {
            return select(e.clone()).boxed();
        }
    }
    let types: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => TYPES.to_vec(),
    };
    let mut options: Vec<BoxedStrategy<Value>> = Vec::new();
    for t in types {
        options.push(match t {
            "string" => select(vec![json!(""), json!("a"), json!("ab"), json!("abc")]).boxed(),
            "number" | "integer" => {
                select(vec![json!(-1), json!(0), json!(1), json!(2), json!(3), json!(1.5)]).boxed()
            }
            "boolean" => any::<bool>().prop_map(Value::Bool).boxed(),
            "null" => Just(Value::Null).boxed(),
            "object" => {
                let props = m.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
                let extra = m.get("additionalProperties").or(m.get("unevaluatedProperties")).cloned();
                let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = props
                    .iter()
                    .map(|(k, ps)| {
                        let k = k.clone();
                        proptest::option::weighted(0.8, instance_for(ps, depth - 1))
                            .prop_map(move |v| v.map(|v| (k.clone(), v)))
                            .boxed()
                    })
                    .collect();
                for k in ["c", "d"] {
                    let es = extra.clone().unwrap_or(json!({}));
                    fields.push(
                        proptest::option::weighted(0.3, instance_for(&es, depth - 1))
                            .prop_map(move |v| v.map(|v| (k.to_owned(), v)))
                            .boxed(),
                    );
                }
                fields.prop_map(|f| Value::Object(f.into_iter().flatten().collect())).boxed()
            }
            "array" => {
                let prefix = m.get("prefixItems").and_then(Value::as_array).cloned().unwrap_or_default();
                let rest = m
                    .get("items")
                    .or(m.get("unevaluatedItems"))
                    .filter(|r| !r.is_boolean())
                    .cloned()
                    .unwrap_or(json!({}));
                let elems: Vec<BoxedStrategy<Value>> =
                    (0..4).map(|i| instance_for(prefix.get(i).unwrap_or(&rest), depth - 1)).collect();
                (elems, 0usize..5)
                    .prop_map(|(mut v, len)| {
                        v.truncate(len);
                        Value::Array(v)
                    })
                    .boxed()
            }
            _ => select(scalar_pool()).boxed(),
        });
    }
    options.push(any_scalar);
    proptest::strategy::Union::new(options).boxed()
}

/// The validator as the registry builds it (draft 2020-12, formats asserted).
fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("generated schema {schema} does not compile: {e}"))
}

fn case() -> impl Strategy<Value = (Value, Value, Vec<Value>)> {
    (schema(), proptest::collection::vec(edit(), 1..3)).prop_flat_map(|(old, edits)| {
        let new = edits.iter().fold(old.clone(), apply);
        let instances = proptest::collection::vec(instance_for(&old, 4), 12);
        (Just(old), Just(new), instances)
    })
}

proptest! {
    #![proptest_config(Config {
        cases: 1500,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x6b61_6b65),
        ..Config::default()
    })]

    #[test]
    fn backward_compatible_verdicts_are_sound((old, new, instances) in case()) {
        if backward(old.clone(), new.clone()).is_empty() {
            let (before, after) = (validator(&old), validator(&new));
            for i in instances.iter().filter(|i| before.is_valid(i)) {
                prop_assert!(
                    after.is_valid(i),
                    "judged BACKWARD-compatible, but {i} is valid under old {old} and invalid under new {new}"
                );
            }
        }
    }
}
