// fuse_export_et_client: run a fuse-export ExecuTorch program (model.pte, model.int8.pte) from C++ with the
// ExecuTorch runtime that the executorch wheel ships, and print its outputs as JSON.
//
//   fuse_export_et_client MODEL.pte [--input FILE] [--batch N] [--size S]
//
// The same command-line contract as examples/cpp: the input is the float contract, image float32 [N, 3, S, S],
// RGB, already normalized with the model's mean/std. --input reads it from a raw little-endian float32 file
// (N is its size / (3*S*S)); without it a deterministic pattern is generated (value of flat index
// i = ((i * 7919) % 1000) / 500 - 1), so another program can rebuild the same tensor. S defaults to the
// image_size in the program's metadata, which the program returns from its `fuse_export_metadata` method.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/platform.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::from_blob;
using executorch::runtime::Error;
using executorch::runtime::Result;

namespace {

const char* kMetadataMethod = "fuse_export_metadata";  // to_executorch.METADATA_METHOD
const char* kOutputNames[] = {"logits", "probabilities", "confidence"};  // the I/O contract's order

struct Args {
  std::string model;
  std::string input;
  int64_t batch = 1;
  int64_t size = 0;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "error: " << why << "\nusage: fuse_export_et_client MODEL.pte [--input FILE] [--batch N] [--size S]\n";
  std::exit(2);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(arg + " needs a value");
      return argv[++i];
    };
    auto integer = [&]() -> int64_t {
      const std::string v = value();
      try {
        size_t used = 0;
        const int64_t n = std::stoll(v, &used);
        if (used == v.size()) return n;
      } catch (const std::exception&) {
      }
      usage(arg + " needs an integer, got " + v);
    };
    if (arg == "--input") a.input = value();
    else if (arg == "--batch") a.batch = integer();
    else if (arg == "--size") a.size = integer();
    else if (!arg.empty() && arg[0] == '-') usage("unknown option " + arg);
    else if (a.model.empty()) a.model = arg;
    else usage("more than one MODEL given");
  }
  if (a.model.empty()) usage("MODEL is required");
  if (a.batch < 1) usage("--batch must be >= 1");
  return a;
}

// The runtime logs through its platform layer (PAL), and the wheel's build logs at Info level: a few lines about
// CPU detection on every run. A log function of our own keeps the errors (they say why a load failed) on stderr
// and drops the rest, so stderr holds what matters.
void log_errors_only(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*, size_t line,
                     const char* message, size_t) {
  if (level == kError || level == kFatal)
    std::fprintf(stderr, "%c executorch:%s:%zu] %s\n", static_cast<char>(level), filename, line, message);
}

// ExecuTorch reports failures as Error codes, not exceptions: turn one into the client's one-line error.
template <typename T>
T ok_or_throw(Result<T>&& result, const std::string& what) {
  if (!result.ok()) throw std::runtime_error(what + " failed: " + executorch::runtime::to_string(result.error()));
  return std::move(result.get());
}

// The metadata is JSON written by fuse-export (sorted keys, so the top-level fields come before the nested
// "preprocessing" copy); the client needs a few fields of it, so a tiny lookup stands in for a JSON library.
std::string json_field(const std::string& json, const std::string& key) {
  auto at = json.find("\"" + key + "\"");
  if (at == std::string::npos) return "";
  at = json.find(':', at);
  return at == std::string::npos ? "" : json.substr(at + 1);
}

int64_t json_int(const std::string& json, const std::string& key) {
  std::string rest = json_field(json, key);
  return rest.empty() ? 0 : std::stoll(rest);
}

std::string json_text(const std::string& json, const std::string& key) {
  std::string rest = json_field(json, key);
  auto open = rest.find('"');
  return open == std::string::npos ? "" : rest.substr(open + 1, rest.find('"', open + 1) - open - 1);
}

std::vector<std::string> json_strings(const std::string& json, const std::string& key) {
  std::vector<std::string> names;
  std::string rest = json_field(json, key);
  auto open = rest.find('['), close = rest.find(']');
  if (open == std::string::npos || close == std::string::npos) return names;
  for (auto q = rest.find('"', open); q != std::string::npos && q < close; q = rest.find('"', q + 1)) {
    auto end = rest.find('"', q + 1);
    names.push_back(rest.substr(q + 1, end - q - 1));
    q = end;
  }
  return names;
}

// The program's own description: its constant method returns the metadata JSON as a uint8 tensor.
std::string read_metadata(Module& module) {
  const auto names = ok_or_throw(module.method_names(), "listing the program's methods");
  if (!names.count(kMetadataMethod)) return "";  // not a fuse-export program (or an older one): no metadata
  const auto outputs = ok_or_throw(module.execute(kMetadataMethod), std::string("running ") + kMetadataMethod);
  if (outputs.size() != 1 || !outputs[0].isTensor() || outputs[0].toTensor().scalar_type() != ScalarType::Byte)
    throw std::runtime_error(std::string(kMetadataMethod) + " did not return one uint8 tensor");
  const auto& bytes = outputs[0].toTensor();
  return std::string(bytes.const_data_ptr<char>(), static_cast<size_t>(bytes.numel()));
}

std::vector<float> make_input(const Args& a, int64_t size, int64_t& batch) {
  const int64_t per_image = 3 * size * size;
  if (!a.input.empty()) {
    std::ifstream f(a.input, std::ios::binary | std::ios::ate);
    if (!f) usage("cannot open --input " + a.input);
    const auto bytes = static_cast<int64_t>(f.tellg());
    if (bytes == 0 || bytes % (per_image * 4) != 0)
      usage(a.input + ": " + std::to_string(bytes) + " bytes is not a whole number of float32 [3, " +
            std::to_string(size) + ", " + std::to_string(size) + "] images");
    batch = bytes / (per_image * 4);
    std::vector<float> x(static_cast<size_t>(batch * per_image));
    f.seekg(0);
    f.read(reinterpret_cast<char*>(x.data()), bytes);
    return x;
  }
  batch = a.batch;
  std::vector<float> x(static_cast<size_t>(batch * per_image));
  for (int64_t i = 0; i < static_cast<int64_t>(x.size()); ++i)
    x[i] = static_cast<float>((i * 7919) % 1000) / 500.0f - 1.0f;
  return x;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

void print_matrix(const std::vector<float>& values, int64_t rows) {
  const int64_t cols = static_cast<int64_t>(values.size()) / std::max<int64_t>(rows, 1);
  std::cout << "[";
  for (int64_t r = 0; r < rows; ++r) {
    std::cout << (r ? ", [" : "[");
    for (int64_t k = 0; k < cols; ++k) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.9g", values[r * cols + k]);
      std::cout << (k ? ", " : "") << buf;
    }
    std::cout << "]";
  }
  std::cout << "]";
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(log_errors_only, __FILE__));
  try {
    // Module is the runtime's high-level facade: it owns the file's data loader, the planned memory of each
    // method and the method objects. The kernels and the XNNPACK delegate are not named here: their libraries
    // register themselves when loaded (see CMakeLists.txt for why they must stay linked).
    Module module(args.model, Module::LoadMode::File);
    if (const Error err = module.load(); err != Error::Ok)
      throw std::runtime_error(std::string("not a loadable ExecuTorch program (") +
                               executorch::runtime::to_string(err) + ")");
    const std::string metadata = read_metadata(module);
    if (json_text(metadata, "input_layout") == "uint8-nhwc")
      usage(args.model + " takes raw uint8 pixels (exported with --embed-preprocessing); this client feeds the "
                         "float32 [N, 3, S, S] contract");
    const int64_t size = args.size > 0 ? args.size : json_int(metadata, "image_size");
    if (size <= 0) usage(args.model + " records no image_size; pass --size");
    int64_t batch = 0;
    std::vector<float> x = make_input(args, size, batch);

    // The program's memory is planned for at most max_batch images (its batch axis is bounded at export), so a
    // larger batch runs in pieces. Outputs live in the method's planned memory and the next execute overwrites
    // them: each piece's outputs are copied out before the next one runs.
    const int64_t max_batch = std::max<int64_t>(json_int(metadata, "max_batch"), 1);  // 1: within any bound
    const int64_t per_image = 3 * size * size;
    std::vector<float> outs[3];
    for (int64_t start = 0; start < batch; start += max_batch) {
      const int64_t n = std::min(max_batch, batch - start);
      auto piece = from_blob(x.data() + start * per_image,
                             {static_cast<int32_t>(n), 3, static_cast<int32_t>(size), static_cast<int32_t>(size)});
      const auto result = ok_or_throw(module.forward(piece), "forward");
      if (result.size() != 3) throw std::runtime_error("expected 3 outputs, got " + std::to_string(result.size()));
      for (size_t k = 0; k < 3; ++k) {
        if (!result[k].isTensor() || result[k].toTensor().scalar_type() != ScalarType::Float)
          throw std::runtime_error(std::string("output ") + kOutputNames[k] + " is not a float32 tensor");
        const auto& t = result[k].toTensor();
        const float* p = t.const_data_ptr<float>();
        outs[k].insert(outs[k].end(), p, p + t.numel());
      }
    }

    const auto names = json_strings(metadata, "class_names");
    const int64_t classes = static_cast<int64_t>(outs[1].size()) / batch;
    std::cout << "{\"model\": " << json_string(args.model) << ", \"runtime\": \"executorch::extension::Module\""
              << ", \"input_shape\": [" << batch << ", 3, " << size << ", " << size << "], \"max_batch\": "
              << max_batch;
    for (size_t k = 0; k < 3; ++k) {
      std::cout << ", \"" << kOutputNames[k] << "\": ";
      print_matrix(outs[k], batch);
    }
    std::cout << ", \"emotion\": [";
    for (int64_t r = 0; r < batch; ++r) {
      const float* row = outs[1].data() + r * classes;
      const auto c = static_cast<size_t>(std::max_element(row, row + classes) - row);
      std::cout << (r ? ", " : "") << json_string(c < names.size() ? names[c] : std::to_string(c));
    }
    // The metadata is JSON already: embedded as it is, so a reader sees exactly what the program carries.
    std::cout << "], \"metadata\": " << (metadata.empty() ? "null" : metadata) << "}" << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "error: " << args.model << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}
