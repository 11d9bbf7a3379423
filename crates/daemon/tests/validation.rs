//! Every numeric field of every request, found by walking the proto's descriptors (so a
//! field added later is covered without touching this test), is sent to a real daemon
//! with zero, negative, NaN, ±∞ and huge values. A value outside the field's range in
//! `validate::RULES` must come back INVALID_ARGUMENT naming the field; a value inside it
//! must not be refused for that field.

use std::collections::BTreeSet;

use oneiro_daemon::DaemonConfig;
use oneiro_daemon::device::DeviceSpec;
use oneiro_daemon::validate::{self, Accept};
use oneiro_proto::v1::{self as pb, oneiro_client::OneiroClient};
use prost::Message;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::Code;

/// A numeric field reached from an RPC's request: the fields leading to it.
struct Leaf {
    method: String,
    /// (field number, wire name) from the request down to the numeric field.
    path: Vec<(i32, String)>,
    key: String,
    ty: Type,
}

fn messages(set: &FileDescriptorSet) -> Vec<(String, &DescriptorProto)> {
    let mut out = Vec::new();
    for f in &set.file {
        for m in &f.message_type {
            out.push((format!(".{}.{}", f.package(), m.name()), m));
        }
    }
    out
}

fn walk(
    all: &[(String, &DescriptorProto)],
    type_name: &str,
    prefix: Vec<(i32, String)>,
    seen: &mut Vec<String>,
    method: &str,
    out: &mut Vec<Leaf>,
) {
    if seen.iter().any(|s| s == type_name) {
        return;
    }
    let (_, msg) = all
        .iter()
        .find(|(n, _)| n == type_name)
        .unwrap_or_else(|| panic!("no message {type_name}"));
    seen.push(type_name.to_string());
    for field in &msg.field {
        let mut path = prefix.clone();
        path.push((field.number(), field.name().to_string()));
        match field.r#type() {
            Type::Message => walk(all, field.type_name(), path, seen, method, out),
            ty @ (Type::Uint32
            | Type::Uint64
            | Type::Int32
            | Type::Int64
            | Type::Float
            | Type::Double) => out.push(Leaf {
                method: method.to_string(),
                path,
                key: format!("{}.{}", msg.name(), field.name()),
                ty,
            }),
            _ => {}
        }
    }
    seen.pop();
}

fn leaves() -> Vec<Leaf> {
    let set = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let all = messages(&set);
    let service = set
        .file
        .iter()
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "Oneiro")
        .expect("the Oneiro service");
    let mut out = Vec::new();
    for m in &service.method {
        walk(
            &all,
            m.input_type(),
            vec![],
            &mut vec![],
            m.name(),
            &mut out,
        );
    }
    out
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The request bytes holding only `value` at `path` (one element for repeated fields).
fn encode(path: &[(i32, String)], ty: Type, value: f64) -> Vec<u8> {
    let (number, _) = path.last().unwrap();
    let mut bytes = Vec::new();
    let n = *number as u64;
    match ty {
        Type::Float => {
            varint(n << 3 | 5, &mut bytes);
            bytes.extend((value as f32).to_le_bytes());
        }
        Type::Double => {
            varint(n << 3 | 1, &mut bytes);
            bytes.extend(value.to_le_bytes());
        }
        _ => {
            varint(n << 3, &mut bytes);
            // Integers: negative values are sent as their two's complement (int64).
            varint(
                if value < 0.0 {
                    value as i64 as u64
                } else {
                    value as u64
                },
                &mut bytes,
            );
        }
    }
    for (number, _) in path[..path.len() - 1].iter().rev() {
        let mut outer = Vec::new();
        varint((*number as u64) << 3 | 2, &mut outer);
        varint(bytes.len() as u64, &mut outer);
        outer.extend(bytes);
        bytes = outer;
    }
    bytes
}

fn candidates(ty: Type) -> Vec<f64> {
    match ty {
        Type::Uint32 => vec![0.0, 1.0, 2.0, 9.0, 10.0, 64.0, 65.0, u32::MAX as f64],
        Type::Uint64 => vec![0.0, 1.0, u64::MAX as f64],
        Type::Int32 | Type::Int64 => vec![-1.0, 0.0, 1.0],
        _ => vec![
            0.0,
            -1.0,
            0.5,
            1.0,
            1.5,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e30,
        ],
    }
}

fn accepts(rule: Accept, ty: Type, v: f64, config: &DaemonConfig) -> bool {
    match ty {
        Type::Float => rule.accepts_float(v as f32 as f64),
        Type::Double => rule.accepts_float(v),
        _ => rule.accepts_int(v as u64, config),
    }
}

async fn call(
    client: &mut OneiroClient<tonic::transport::Channel>,
    method: &str,
    bytes: &[u8],
) -> Option<tonic::Status> {
    macro_rules! dispatch {
        ($($name:literal => $f:ident($t:ty)),* $(,)?) => {
            match method {
                $($name => client.$f(<$t>::decode(bytes).expect("decodes")).await.err(),)*
                other => panic!("no dispatch for {other}: add it here"),
            }
        };
    }
    dispatch! {
        "CreateModel" => create_model(pb::CreateModelRequest),
        "Train" => train(pb::TrainRequest),
        "Generate" => generate(pb::GenerateRequest),
        "VaeGrid" => vae_grid(pb::VaeGridRequest),
        "VaeDecode" => vae_decode(pb::VaeDecodeRequest),
        "VaeConcept" => vae_concept(pb::VaeConceptRequest),
        "VaeMorph" => vae_morph(pb::VaeMorphRequest),
        "GanSample" => gan_sample(pb::GanSampleRequest),
        "Dream" => dream(pb::DreamRequest),
        "Style" => style(pb::StyleRequest),
    }
}

#[test]
fn every_numeric_request_field_has_a_range_and_no_range_is_stale() {
    let leaves = leaves();
    let keys: BTreeSet<&str> = leaves.iter().map(|l| l.key.as_str()).collect();
    let missing: Vec<&&str> = keys
        .iter()
        .filter(|k| validate::rule(k).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "fields without a range in RULES: {missing:?}"
    );
    let stale: Vec<&str> = validate::RULES
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !keys.contains(k))
        .collect();
    assert!(
        stale.is_empty(),
        "RULES names fields no request has: {stale:?}"
    );
}

#[tokio::test]
async fn out_of_range_numbers_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DaemonConfig::new(dir.path().to_path_buf());
    config.device = DeviceSpec::Cpu;
    config.max_generate_length = 5000;
    // Requests with in-range numbers go on to resolve weights: never from the network.
    config.hub.offline = true;
    config.hub.cache_dir = Some(dir.path().join("hub"));
    let daemon = oneiro_daemon::spawn(config.clone(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let mut client = OneiroClient::connect(daemon.endpoint()).await.unwrap();
    let (mut refused, mut accepted) = (0, 0);
    for leaf in leaves() {
        let rule = validate::rule(&leaf.key).unwrap();
        // The field as validate.rs names it: its path, without repeated indices.
        let field = leaf.path.last().unwrap().1.clone();
        for v in candidates(leaf.ty) {
            let bytes = encode(&leaf.path, leaf.ty, v);
            let status = call(&mut client, &leaf.method, &bytes).await;
            let what = format!("{} {} = {v}", leaf.method, leaf.key);
            let names_field = status.as_ref().is_some_and(|s| {
                s.code() == Code::InvalidArgument
                    && s.message().contains(field.as_str())
                    && s.message().contains(" must be ")
            });
            if accepts(rule, leaf.ty, v, &config) {
                assert!(!names_field, "{what} is in range but refused: {status:?}");
                accepted += 1;
            } else {
                let s = status.unwrap_or_else(|| panic!("{what} was accepted"));
                assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
                let top = &leaf.path[0].1;
                assert!(
                    names_field && s.message().starts_with(top.as_str()),
                    "{what}: the error does not name the field: {}",
                    s.message()
                );
                refused += 1;
            }
        }
    }
    assert!(
        refused > 150 && accepted > 100,
        "{refused} refused, {accepted} accepted"
    );
    daemon.shutdown().await.unwrap();
}
