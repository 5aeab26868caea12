//! Reading a TorchScript archive's weights without PyTorch: the archive is a zip holding
//! `<name>/data.pkl` (the module tree, pickled) and `<name>/data/<key>` (each tensor's storage,
//! little-endian). The pickle is read with candle's unpickler; the module tree is walked here,
//! so nested modules (which candle's `.pth` reader does not descend into) give dotted names
//! such as `net.layers.mixed.conv.weight`.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::pickle::{Object, Stack};
use candle_core::DType;

use crate::error::{MetricsError, Result};

/// A float32 tensor read from the archive.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Everything the module tree holds that a network description needs: float tensors and
/// integer attributes (strides, paddings), by dotted path.
#[derive(Debug, Default)]
pub struct Archive {
    pub tensors: BTreeMap<String, Tensor>,
    pub ints: BTreeMap<String, Vec<i64>>,
}

/// Where a tensor's data lives in the zip.
struct Pending {
    name: String,
    shape: Vec<usize>,
    entry: String,
}

/// Reads every float32 tensor and integer attribute of the TorchScript module in `path`.
pub fn read(path: &Path) -> Result<Archive> {
    let bad = |message: String| MetricsError::data(path, message);
    let file = std::fs::File::open(path).map_err(|e| MetricsError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| bad(format!("not a TorchScript archive (zip): {e}")))?;
    let pickle_name = (0..zip.len())
        .filter_map(|i| {
            zip.name_for_index(i)
                .and_then(Result::ok)
                .map(|n| n.into_owned())
        })
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| bad("not a TorchScript archive: no <name>/data.pkl".into()))?;
    let data_dir = pickle_name.trim_end_matches(".pkl").to_string();
    let root = {
        let entry = zip
            .by_name(&pickle_name)
            .map_err(|e| bad(format!("{pickle_name}: {e}")))?;
        let mut reader = BufReader::new(entry);
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut reader)
            .map_err(|e| bad(format!("{pickle_name}: cannot unpickle: {e}")))?;
        stack
            .finalize()
            .map_err(|e| bad(format!("{pickle_name}: cannot unpickle: {e}")))?
    };
    let mut archive = Archive::default();
    let mut pending = Vec::new();
    walk(root, "", &data_dir, &mut archive, &mut pending, path)?;
    for p in pending {
        let values = read_f32(&mut zip, &p, path)?;
        archive.tensors.insert(
            p.name,
            Tensor {
                shape: p.shape,
                values,
            },
        );
    }
    Ok(archive)
}

/// The attributes of a pickled TorchScript object (`Build(Reduce(class, ..), dict)`).
fn attributes(obj: Object) -> Option<Vec<(Object, Object)>> {
    match obj {
        Object::Build { callable, args } => match (*callable, *args) {
            (Object::Reduce { callable, .. }, Object::Dict(entries))
                if matches!(&*callable, Object::Class { module_name, .. }
                    if module_name.starts_with("__torch__")) =>
            {
                Some(entries)
            }
            _ => None,
        },
        _ => None,
    }
}

fn walk(
    obj: Object,
    prefix: &str,
    data_dir: &str,
    archive: &mut Archive,
    pending: &mut Vec<Pending>,
    path: &Path,
) -> Result<()> {
    let Some(entries) = attributes(obj) else {
        return Err(MetricsError::data(
            path,
            format!(
                "`{}` is not a TorchScript module object",
                prefix.trim_end_matches('.')
            ),
        ));
    };
    for (key, value) in entries {
        let Object::Unicode(key) = key else { continue };
        let name = format!("{prefix}{key}");
        match value {
            Object::Int(i) => {
                archive.ints.insert(name, vec![i64::from(i)]);
            }
            Object::Long(i) => {
                archive.ints.insert(name, vec![i]);
            }
            Object::List(items) | Object::Tuple(items) => {
                if let Some(ints) = int_list(items) {
                    archive.ints.insert(name, ints);
                }
            }
            // TorchScript pickles a `List[int]` as `torch.jit._pickle.build_intlist([...])`.
            Object::Reduce { callable, args }
                if matches!(&*callable, Object::Class { module_name, class_name }
                    if module_name == "torch.jit._pickle" && class_name == "build_intlist") =>
            {
                let list = match *args {
                    Object::Tuple(mut a) if a.len() == 1 => a.pop(),
                    _ => None,
                };
                if let Some(Object::List(items)) = list {
                    if let Some(ints) = int_list(items) {
                        archive.ints.insert(name, ints);
                    }
                }
            }
            v @ Object::Build { .. } => {
                walk(v, &format!("{name}."), data_dir, archive, pending, path)?
            }
            v @ Object::Reduce { .. } => {
                let info = v
                    .into_tensor_info(Object::Unicode(name.clone()), Path::new(data_dir))
                    .map_err(|e| MetricsError::data(path, format!("{name}: {e}")))?;
                let Some(info) = info else { continue };
                if info.dtype != DType::F32 {
                    return Err(MetricsError::data(
                        path,
                        format!("{name}: {:?} tensor, only float32 is read", info.dtype),
                    ));
                }
                if !info.layout.is_contiguous() || info.layout.start_offset() != 0 {
                    return Err(MetricsError::data(
                        path,
                        format!("{name}: a strided or offset view, only whole tensors are read"),
                    ));
                }
                pending.push(Pending {
                    name,
                    shape: info.layout.dims().to_vec(),
                    entry: info.path,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// The values of a list of pickled integers (`None` if any is not one).
fn int_list(items: Vec<Object>) -> Option<Vec<i64>> {
    items
        .into_iter()
        .map(|o| match o {
            Object::Int(i) => Some(i64::from(i)),
            Object::Long(i) => Some(i),
            _ => None,
        })
        .collect()
}

fn read_f32(
    zip: &mut zip::ZipArchive<BufReader<std::fs::File>>,
    p: &Pending,
    path: &Path,
) -> Result<Vec<f32>> {
    let numel: usize = p.shape.iter().product();
    let mut entry = zip
        .by_name(&p.entry)
        .map_err(|e| MetricsError::data(path, format!("{}: storage {}: {e}", p.name, p.entry)))?;
    let mut bytes = Vec::with_capacity(numel * 4);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| MetricsError::data(path, format!("{}: storage {}: {e}", p.name, p.entry)))?;
    if bytes.len() < numel * 4 {
        return Err(MetricsError::data(
            path,
            format!(
                "{}: storage {} holds {} bytes, the tensor {:?} needs {}",
                p.name,
                p.entry,
                bytes.len(),
                p.shape,
                numel * 4
            ),
        ));
    }
    Ok(bytes[..numel * 4]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}
