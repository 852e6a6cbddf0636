#pragma once
/// \file
/// carousel::checkpoint::WeightStore — every tensor of one diffusers / transformers component folder (unet/, vae/,
/// text_encoder/), addressed by name, with the bookkeeping a loader needs: shape checks on every read, and a final
/// check that no tensor of the checkpoint was left unread.
///
/// Example:
/// \code
///   auto store = carousel::checkpoint::WeightStore::open(folder / "unet");
///   std::vector<float> w = store.take("conv_in.weight", {320, 4, 3, 3});
///   ...                                 // every parameter of the module tree
///   store.require_all_used();          // a tensor nobody read means the tree and the checkpoint disagree
/// \endcode

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "carousel/checkpoint/format_error.hpp"
#include "carousel/checkpoint/safetensors.hpp"

namespace carousel::checkpoint {

/// All weights of one component folder, name -> tensor, converted to float32 on read.
///
/// Files looked for, in this order (`base` is `diffusion_pytorch_model` (diffusers), then `model` (transformers)):
/// with a variant V asked: `base.V.safetensors`, then the sharded index `base.safetensors.index.V.json`; then, and
/// always without a variant: `base.safetensors`, then `base.safetensors.index.json` (diffusers falls back the same
/// way when a component lacks the variant); without a variant and with none of those present, the single variant
/// file `base.*.safetensors` if exactly one exists (e.g. a folder that ships only the fp16 weights).
///
/// A sharded index may only name `.safetensors` files in its own folder (a bare file name).
///
/// Legacy names: VAE attention tensors saved before diffusers 0.14 (`<...>.attentions.N.query|key|value|proj_attn.*`)
/// are renamed to `to_q|to_k|to_v|to_out.0` at open when the new name is absent. A rank-2 read ([out, in]) of a
/// `to_q/to_k/to_v/to_out.0` weight also accepts a stored 1x1-convolution shape [out, in, 1, 1] (same bytes).
///
/// Not thread-safe: take() updates the used-set; build a module tree on one thread.
class WeightStore {
 public:
  /// Opens the weights of `component_dir` (see the class comment for which files), variant e.g. "fp16".
  /// \throws FormatError naming the folder when no weight file is found, a file is malformed, two files
  ///         (shards) hold the same tensor name, or a variant is ambiguous.
  static WeightStore open(const std::filesystem::path& component_dir, std::string_view variant = "") {
    WeightStore store;
    store.dir_ = component_dir;
    for (const auto& file : find_weight_files(component_dir, variant))
      store.add_file(file);
    store.rename_legacy_attention();
    return store;
  }

  /// One tensor of a store made by open_renamed(): the stored tensor `stored`, read as `name`; when `rows` > 0 only
  /// rows [row_begin, row_begin + rows) of its first dimension (a part of a fused tensor, e.g. q of a fused q/k/v).
  struct Renamed {
    std::string name;            ///< the name the module tree asks for
    std::string stored;          ///< the tensor's key in the file
    std::int64_t row_begin = 0;  ///< first row of the part (with rows > 0)
    std::int64_t rows = 0;       ///< rows of the part; 0: the whole tensor
  };

  /// A store over some tensors of one safetensors file under other names (a single-file checkpoint's part, mapped in
  /// memory, no copy on disk); `where` names the part in errors (e.g. "'sd.safetensors' (unet)").
  /// \throws FormatError naming the file when it is malformed, a stored tensor is missing, a row range lies outside
  ///         its tensor, or two entries share a name.
  static WeightStore open_renamed(const std::filesystem::path& file, const std::vector<Renamed>& tensors,
                                  const std::string& where) {
    WeightStore store;
    store.dir_ = where;
    store.files_.push_back(SafetensorsFile::open(file));
    std::map<std::string_view, std::size_t> index;
    const auto& stored = store.files_[0].tensors();
    for (std::size_t i = 0; i < stored.size(); ++i)
      index.emplace(stored[i].name, i);
    for (const auto& t : tensors) {
      const auto it = index.find(t.stored);
      if (it == index.end()) throw FormatError("weights in " + where + ": tensor '" + t.stored + "' is missing");
      Entry e{0, it->second, false, stored[it->second].shape, t.row_begin, t.rows};
      if (t.rows > 0) {
        if (e.shape.empty() || t.row_begin < 0 || t.row_begin + t.rows > e.shape[0])
          throw FormatError("weights in " + where + ": tensor '" + t.stored + "' has no rows [" +
                            std::to_string(t.row_begin) + ", " + std::to_string(t.row_begin + t.rows) + ")");
        e.shape[0] = t.rows;
      }
      if (!store.entries_.emplace(t.name, std::move(e)).second)
        throw FormatError("weights in " + where + ": two tensors map to '" + t.name + "'");
    }
    return store;
  }

  /// The safetensors files the store reads (one, or the shards in index order).
  std::vector<std::filesystem::path> files() const {
    std::vector<std::filesystem::path> out;
    for (const auto& file : files_)
      out.emplace_back(file.name());
    return out;
  }

  /// Whether a tensor called `name` exists (after legacy renaming and alias()).
  bool contains(std::string_view name) const { return entries_.find(name) != entries_.end(); }

  /// All tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, entry] : entries_)
      out.push_back(name);
    return out;
  }

  /// The stored tensor `name` (dtype, shape). \throws FormatError naming the tensor and folder when missing.
  /// For a part of a fused tensor (open_renamed() with rows) this is the whole stored tensor; shape() is the part's.
  const TensorInfo& info(std::string_view name) const { return tensor(entry(name)); }

  /// The shape take(name) reads. \throws FormatError naming the tensor and folder when missing.
  const std::vector<std::int64_t>& shape(std::string_view name) const { return entry(name).shape; }

  /// The values of tensor `name` as float32, checked to have `expected_shape`, and marks it used.
  /// \throws FormatError naming the tensor, its file, the expected and the actual shape when it is missing,
  ///         mis-shaped, or not floating point.
  std::vector<float> take(std::string_view name, std::span<const std::int64_t> expected_shape) {
    auto& e = entry(name);
    const auto& t = tensor(e);
    if (!shape_matches(name, e.shape, expected_shape))
      throw FormatError("tensor '" + std::string(name) + "' in '" + files_[e.file].name() + "': expected shape " +
                        format_shape(expected_shape) + ", file has " + format_shape(e.shape));
    auto values = files_[e.file].to_float(t);
    if (e.rows > 0) {
      const auto row = static_cast<std::ptrdiff_t>(t.numel() / t.shape[0]);
      values = std::vector<float>(values.begin() + e.row_begin * row, values.begin() + (e.row_begin + e.rows) * row);
    }
    e.used = true;
    return values;
  }

  /// As take(name, span), with the shape written inline: `store.take("conv_in.bias", {320})`.
  std::vector<float> take(std::string_view name, std::initializer_list<std::int64_t> expected_shape) {
    return take(name, std::span<const std::int64_t>(expected_shape.begin(), expected_shape.size()));
  }

  /// Makes the stored tensor `legacy_name` readable as `name` (and no longer as `legacy_name`). Does nothing when
  /// `legacy_name` is absent or `name` already exists.
  void alias(std::string_view legacy_name, std::string_view name) {
    const auto it = entries_.find(legacy_name);
    if (it == entries_.end() || contains(name)) return;
    auto moved = it->second;
    entries_.erase(it);
    entries_.emplace(std::string(name), moved);
  }

  /// Prefixes every tensor name that lacks `prefix` with it. For CLIP text encoders saved by transformers >= 5,
  /// which drop the `text_model.` prefix that SD-1.x files (and this project's loaders) use:
  /// `store.add_missing_prefix("text_model.")`. \throws FormatError if that makes two names equal.
  void add_missing_prefix(std::string_view prefix) {
    std::map<std::string, Entry, std::less<>> renamed;
    for (auto& [name, e] : entries_) {
      std::string key = name.starts_with(prefix) ? name : std::string(prefix) + name;
      if (!renamed.emplace(key, e).second)
        throw FormatError("weights in '" + dir_.string() + "': tensor '" + key + "' is stored with and without the '" +
                          std::string(prefix) + "' prefix");
    }
    entries_ = std::move(renamed);
  }

  /// Excludes every tensor whose name starts with `prefix` from unused() and require_all_used(): for parts of a
  /// checkpoint a loader skips on purpose, e.g. `store.ignore_prefix("encoder.")` when only a VAE's decoder is built.
  void ignore_prefix(std::string_view prefix) { ignored_prefixes_.emplace_back(prefix); }

  /// Names of the tensors no take() has read yet, sorted; the `*embeddings.position_ids` buffer of CLIP text
  /// encoders and names under an ignore_prefix() are never listed.
  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (const auto& [name, e] : entries_)
      if (!e.used && !ignorable(name)) out.push_back(name);
    return out;
  }

  /// \throws FormatError listing the unused tensors (the first 20 and a count) when there are any.
  void require_all_used() const {
    const auto left = unused();
    if (left.empty()) return;
    std::string list;
    for (std::size_t i = 0; i < left.size() && i < 20; ++i)
      list += (i ? ", " : "") + left[i];
    if (left.size() > 20) list += ", ...";
    throw FormatError("weights in '" + dir_.string() + "': " + std::to_string(left.size()) +
                      " tensor(s) were not used by the model (unexpected for its config): " + list);
  }

 private:
  struct Entry {
    std::size_t file = 0;
    std::size_t tensor = 0;  // index into files_[file].tensors()
    bool used = false;
    std::vector<std::int64_t> shape;  // what take() reads: the tensor's, or its row range's
    std::int64_t row_begin = 0;
    std::int64_t rows = 0;  // 0: the whole tensor
  };

  Entry& entry(std::string_view name) { return const_cast<Entry&>(static_cast<const WeightStore*>(this)->entry(name)); }
  const Entry& entry(std::string_view name) const {
    const auto it = entries_.find(name);
    if (it == entries_.end())
      throw FormatError("tensor '" + std::string(name) + "' is missing from the weights in '" + dir_.string() + "'");
    return it->second;
  }
  const TensorInfo& tensor(const Entry& e) const { return files_[e.file].tensors()[e.tensor]; }

  bool ignorable(std::string_view name) const {
    if (name.ends_with("embeddings.position_ids")) return true;
    return std::any_of(ignored_prefixes_.begin(), ignored_prefixes_.end(),
                       [&](const std::string& prefix) { return name.starts_with(prefix); });
  }

  static bool is_attention_projection(std::string_view name) {
    for (std::string_view suffix : {".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"})
      if (name.ends_with(suffix)) return true;
    return false;
  }

  static bool shape_matches(std::string_view name, std::span<const std::int64_t> actual,
                            std::span<const std::int64_t> expected) {
    if (std::equal(actual.begin(), actual.end(), expected.begin(), expected.end())) return true;
    return expected.size() == 2 && actual.size() == 4 && actual[0] == expected[0] && actual[1] == expected[1] &&
           actual[2] == 1 && actual[3] == 1 && is_attention_projection(name);
  }

  void add_file(const std::filesystem::path& path) {
    files_.push_back(SafetensorsFile::open(path));
    const std::size_t index = files_.size() - 1;
    const auto& tensors = files_.back().tensors();
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      if (!entries_.emplace(tensors[i].name, Entry{index, i, false, tensors[i].shape, 0, 0}).second)
        throw FormatError("weights in '" + dir_.string() + "': tensor '" + tensors[i].name +
                          "' is stored in more than one file (second: '" + path.string() + "')");
    }
  }

  void rename_legacy_attention() {
    static constexpr std::pair<std::string_view, std::string_view> renames[] = {
        {".query.", ".to_q."}, {".key.", ".to_k."}, {".value.", ".to_v."}, {".proj_attn.", ".to_out.0."}};
    std::vector<std::pair<std::string, std::string>> todo;
    for (const auto& [name, e] : entries_) {
      if (name.find(".attentions.") == std::string::npos) continue;
      for (const auto& [old_part, new_part] : renames) {
        const auto at = name.rfind(old_part);
        if (at == std::string::npos || name.find('.', at + old_part.size()) != std::string::npos) continue;
        todo.emplace_back(name, name.substr(0, at) + std::string(new_part) + name.substr(at + old_part.size()));
      }
    }
    for (const auto& [old_name, new_name] : todo)
      alias(old_name, new_name);
  }

  static std::vector<std::filesystem::path> read_index(const std::filesystem::path& index_path) {
    std::ifstream in(index_path);
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError("weight index '" + index_path.string() + "': not valid JSON: " + e.what());
    }
    const auto map = index.find("weight_map");
    if (!index.is_object() || map == index.end() || !map->is_object())
      throw FormatError("weight index '" + index_path.string() + "': no 'weight_map' object");
    std::vector<std::filesystem::path> shards;
    for (const auto& [tensor_name, file] : map->items()) {
      if (!file.is_string())
        throw FormatError("weight index '" + index_path.string() + "': entry '" + tensor_name + "' is not a string");
      const auto& name = file.get_ref<const std::string&>();
      // Shards live beside their index: a path (absolute, "..", or with a separator) could read any file.
      if (name.empty() || name == "." || name == ".." || name.find_first_of("/\\") != std::string::npos ||
          name.find('\0') != std::string::npos || !name.ends_with(".safetensors"))
        throw FormatError("weight index '" + index_path.string() + "': entry '" + tensor_name + "' names '" + name +
                          "', which is not a .safetensors file name in the index's folder");
      const std::filesystem::path shard = index_path.parent_path() / name;
      if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
    }
    return shards;
  }

  static std::vector<std::filesystem::path> find_weight_files(const std::filesystem::path& dir,
                                                              std::string_view variant) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(dir)) throw FormatError("weights: '" + dir.string() + "' is not a directory");
    const std::string v(variant);
    for (const std::string base : {"diffusion_pytorch_model", "model"}) {
      if (!v.empty()) {
        if (fs::exists(dir / (base + "." + v + ".safetensors"))) return {dir / (base + "." + v + ".safetensors")};
        if (fs::exists(dir / (base + ".safetensors.index." + v + ".json")))
          return read_index(dir / (base + ".safetensors.index." + v + ".json"));
      }
    }
    for (const std::string base : {"diffusion_pytorch_model", "model"}) {
      if (fs::exists(dir / (base + ".safetensors"))) return {dir / (base + ".safetensors")};
      if (fs::exists(dir / (base + ".safetensors.index.json")))
        return read_index(dir / (base + ".safetensors.index.json"));
    }
    if (v.empty()) {
      for (const std::string base : {"diffusion_pytorch_model", "model"}) {
        std::vector<fs::path> found;
        for (const auto& item : fs::directory_iterator(dir)) {
          const std::string file = item.path().filename().string();
          if (file.starts_with(base + ".") && file.ends_with(".safetensors") && file.size() > base.size() + 13 &&
              file.find('.', base.size() + 1) == file.size() - 12)
            found.push_back(item.path());
        }
        std::sort(found.begin(), found.end());
        if (found.size() == 1) return found;
        if (found.size() > 1)
          throw FormatError("weights in '" + dir.string() + "': several variants (" + found[0].filename().string() +
                            ", " + found[1].filename().string() + ", ...) and no plain " + base +
                            ".safetensors; ask for a variant");
      }
    }
    throw FormatError("weights in '" + dir.string() + "': no diffusion_pytorch_model" +
                      (v.empty() ? "" : "[." + v + "]") + ".safetensors or model" + (v.empty() ? "" : "[." + v + "]") +
                      ".safetensors (or sharded .safetensors.index.json) found; .bin/.ckpt checkpoints are not "
                      "supported");
  }

  std::filesystem::path dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, Entry, std::less<>> entries_;
  std::vector<std::string> ignored_prefixes_;
};

}  // namespace carousel::checkpoint
