//! Strategies for hostile configuration: arbitrary JSON, and a valid document with some of its
//! fields (at any depth) replaced by arbitrary values or removed. Parsers of tenant-supplied
//! configuration (OCI bundles, CNI) are property-tested with these: any input is accepted or
//! refused with an error, never a panic.

use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON values a few levels deep.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
        Just(Value::from("/")),
        Just(Value::from("../../..")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One step of a path into a document.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every path to a value in `v` (the root excluded).
fn paths(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(Step::Key(k.clone()));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(Step::Index(i));
                out.push(prefix.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// Replaces (Some) or removes (None) the value at `path`, if it is still there.
fn edit(doc: &mut Value, path: &[Step], new: Option<Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = doc;
    for step in parents {
        let next = match (step, at) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k),
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        let Some(next) = next else { return };
        at = next;
    }
    match (last, at, new) {
        (Step::Key(k), Value::Object(m), Some(v)) => {
            m.insert(k.clone(), v);
        }
        (Step::Key(k), Value::Object(m), None) => {
            m.remove(k);
        }
        (Step::Index(i), Value::Array(a), Some(v)) if *i < a.len() => a[*i] = v,
        (Step::Index(i), Value::Array(a), None) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

/// `base` with one to three of its fields replaced by arbitrary values or removed.
pub fn mutated_json(base: Value) -> impl Strategy<Value = Value> {
    let mut all = Vec::new();
    paths(&base, &mut Vec::new(), &mut all);
    let n = all.len().max(1);
    proptest::collection::vec((0..n, proptest::option::of(any_json())), 1..4).prop_map(
        move |edits| {
            let mut doc = base.clone();
            for (i, new) in edits {
                if let Some(path) = all.get(i) {
                    edit(&mut doc, path, new);
                }
            }
            doc
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_reach_nested_fields_and_remove_them() {
        let mut doc = serde_json::json!({"a": {"b": [1, 2]}, "c": 3});
        let mut all = Vec::new();
        paths(&doc, &mut Vec::new(), &mut all);
        assert_eq!(all.len(), 5, "a, a.b, a.b[0], a.b[1], c");
        edit(&mut doc, &all[2], Some(Value::from("x")));
        edit(&mut doc, &all[4], None);
        assert_eq!(doc, serde_json::json!({"a": {"b": ["x", 2]}}));
    }
}
