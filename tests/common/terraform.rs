//! The Terraform module in `infrastructure/terraform`, parsed by `hcl-rs` into the shape
//! `conftest test --parser hcl2 --combine` gives policies: blocks as lists under their type and
//! labels, and expressions that are not literals as their source wrapped in `${...}`.

use std::fs;

use hcl::expr::{Expression, ObjectKey, TemplateExpr};
use hcl::template::{Element, Template};
use hcl::{Body, Structure};
use serde_json::{Map, Value, json};

pub const MODULE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/infrastructure/terraform");
/// `(file name, source)` of every `*.tf` in the module, sorted by name.
pub fn module_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = fs::read_dir(MODULE_DIR)
        .expect("the module directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "tf"))
        .map(|path| {
            let name = path.file_name().expect("a file").to_string_lossy().into();
            (name, fs::read_to_string(&path).expect("a readable file"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.tf in {MODULE_DIR}");
    files
}

/// Each file's `{"path", "contents"}`, as conftest's `--combine` gives them.
pub fn module_json(files: &[(String, String)]) -> Vec<Value> {
    files
        .iter()
        .map(|(path, source)| {
            let body = hcl::parse(source).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
            json!({ "path": path, "contents": body_json(&body) })
        })
        .collect()
}

/// A body as hcl2json (conftest's HCL2 parser) gives it.
pub fn body_json(body: &Body) -> Value {
    let mut out = Map::new();
    for structure in body {
        match structure {
            Structure::Attribute(attr) => {
                out.insert(attr.key().to_owned(), expr_json(attr.expr()));
            }
            Structure::Block(block) => {
                let mut level = &mut out;
                let mut key = block.identifier().to_owned();
                for label in block.labels() {
                    level = level
                        .entry(key)
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .expect("a labelled block's type is an object");
                    key = label.as_str().to_owned();
                }
                let bodies = level.entry(key).or_insert_with(|| json!([]));
                bodies
                    .as_array_mut()
                    .expect("a block is a list of bodies")
                    .push(body_json(block.body()));
            }
        }
    }
    Value::Object(out)
}

fn expr_json(expr: &Expression) -> Value {
    match expr {
        Expression::Null => Value::Null,
        Expression::Bool(b) => json!(b),
        Expression::Number(n) => serde_json::to_value(n).expect("a number"),
        Expression::String(s) => json!(s),
        Expression::Array(items) => items.iter().map(expr_json).collect(),
        Expression::Object(object) => object
            .iter()
            .map(|(key, value)| {
                let key = match key {
                    ObjectKey::Identifier(id) => id.to_string(),
                    ObjectKey::Expression(Expression::String(s)) => s.clone(),
                    ObjectKey::Expression(other) => wrapped(other),
                    _ => unreachable!("ObjectKey has two variants"),
                };
                (key, expr_json(value))
            })
            .collect::<Map<_, _>>()
            .into(),
        Expression::TemplateExpr(template) => json!(template_text(template)),
        other => json!(wrapped(other)),
    }
}

/// A template's literal parts with each interpolation as `${source}`.
fn template_text(template: &TemplateExpr) -> String {
    let parsed = Template::from_expr(template).expect("a parsed template reparses");
    parsed
        .elements()
        .iter()
        .map(|element| match element {
            Element::Literal(text) => text.clone(),
            Element::Interpolation(interpolation) => wrapped(&interpolation.expr),
            Element::Directive(_) => hcl::format::to_string(element).expect("formats"),
        })
        .collect()
}

fn wrapped(expr: &Expression) -> String {
    format!(
        "${{{}}}",
        hcl::format::to_string(expr).expect("an expression formats")
    )
}

/// The real module after `edits`: `(file, from, to)` replaces the one occurrence of `from`, or
/// with an empty `from` appends `to` (to a new file if `file` is not in the module).
pub fn broken(edits: &[(&str, &str, &str)]) -> Vec<(String, String)> {
    let mut files = module_files();
    for &(file, from, to) in edits {
        let index = match files.iter().position(|(name, _)| name == file) {
            Some(index) => index,
            None => {
                files.push((file.to_owned(), String::new()));
                files.len() - 1
            }
        };
        let source = &mut files[index].1;
        if from.is_empty() {
            source.push_str(to);
        } else {
            assert_eq!(
                source.matches(from).count(),
                1,
                "{file} must hold once: {from}"
            );
            *source = source.replacen(from, to, 1);
        }
    }
    files
}
