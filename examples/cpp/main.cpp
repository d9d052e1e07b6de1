// fuse_export_client: run a fuse-export artifact from C++ and print its outputs as JSON.
//
//   fuse_export_client MODEL [--input FILE] [--batch N] [--size S]
//
// MODEL is model.torchscript (loaded with torch::jit::load) or model.pt2 (an AOTInductor package,
// loaded with torch::inductor::AOTIModelPackageLoader). The input is the float contract: image float32
// [N, 3, S, S], RGB, already normalized with the model's mean/std. --input reads it from a raw
// little-endian float32 file (N is its size / (3*S*S)); without it a deterministic pattern is generated
// (value of flat index i = ((i * 7919) % 1000) / 500 - 1), so another program can rebuild the same tensor.
// S defaults to the image_size recorded in the artifact's metadata.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

const char* kMetadataKey = "fuse_export";  // TorchScript extra file "fuse_export.json", pt2 metadata key
const char* kOutputNames[] = {"logits", "probabilities", "confidence"};

struct Args {
  std::string model;
  std::string input;
  int64_t batch = 1;
  int64_t size = 0;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "error: " << why << "\nusage: fuse_export_client MODEL [--input FILE] [--batch N] [--size S]\n";
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
    auto integer = [&]() -> int64_t {  // "--batch two" is a usage error (exit 2), not an uncaught exception
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

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The metadata is JSON written by fuse-export; the client needs two fields of it, so a tiny lookup
// (a number and an array of plain strings) stands in for a JSON library.
std::string json_field(const std::string& json, const std::string& key) {
  auto at = json.find("\"" + key + "\"");
  if (at == std::string::npos) return "";
  at = json.find(':', at);
  return at == std::string::npos ? "" : json.substr(at + 1);
}

int64_t metadata_image_size(const std::string& json) {
  std::string rest = json_field(json, "image_size");
  return rest.empty() ? 0 : std::stoll(rest);
}

std::vector<std::string> metadata_class_names(const std::string& json) {
  std::vector<std::string> names;
  std::string rest = json_field(json, "class_names");
  auto open = rest.find('['), close = rest.find(']');
  if (open == std::string::npos || close == std::string::npos) return names;
  for (auto q = rest.find('"', open); q != std::string::npos && q < close; q = rest.find('"', q + 1)) {
    auto end = rest.find('"', q + 1);
    names.push_back(rest.substr(q + 1, end - q - 1));
    q = end;
  }
  return names;
}

torch::Tensor make_input(const Args& a, int64_t size) {
  const int64_t per_image = 3 * size * size;
  if (!a.input.empty()) {
    std::ifstream f(a.input, std::ios::binary | std::ios::ate);
    if (!f) usage("cannot open --input " + a.input);
    const auto bytes = static_cast<int64_t>(f.tellg());
    if (bytes == 0 || bytes % (per_image * 4) != 0)
      usage(a.input + ": " + std::to_string(bytes) + " bytes is not a whole number of float32 [3, " +
            std::to_string(size) + ", " + std::to_string(size) + "] images");
    auto x = torch::empty({bytes / (per_image * 4), 3, size, size}, torch::kFloat32);
    f.seekg(0);
    f.read(reinterpret_cast<char*>(x.data_ptr<float>()), bytes);
    return x;
  }
  auto x = torch::empty({a.batch, 3, size, size}, torch::kFloat32);
  float* p = x.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) p[i] = static_cast<float>((i * 7919) % 1000) / 500.0f - 1.0f;
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

void print_matrix(const torch::Tensor& t) {
  auto c = t.contiguous().to(torch::kFloat32);
  const float* p = c.data_ptr<float>();
  const int64_t rows = c.size(0), cols = c.numel() / std::max<int64_t>(rows, 1);
  std::cout << "[";
  for (int64_t r = 0; r < rows; ++r) {
    std::cout << (r ? ", [" : "[");
    for (int64_t k = 0; k < cols; ++k) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.9g", p[r * cols + k]);
      std::cout << (k ? ", " : "") << buf;
    }
    std::cout << "]";
  }
  std::cout << "]";
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse_args(argc, argv);
  c10::InferenceMode guard;  // no autograd bookkeeping: this is inference only
  try {
    const bool is_pt2 = ends_with(args.model, ".pt2");
    std::string metadata;
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package;
    torch::jit::Module script;
    if (is_pt2) {
      package = std::make_unique<torch::inductor::AOTIModelPackageLoader>(args.model);
      auto meta = package->get_metadata();
      if (meta.count(kMetadataKey)) metadata = meta.at(kMetadataKey);
    } else {
      torch::jit::ExtraFilesMap extra{{std::string(kMetadataKey) + ".json", ""}};
      script = torch::jit::load(args.model, torch::kCPU, extra);
      script.eval();
      metadata = extra.begin()->second;
    }
    const int64_t size = args.size > 0 ? args.size : metadata_image_size(metadata);
    if (size <= 0) usage(args.model + " records no image_size; pass --size");
    const torch::Tensor x = make_input(args, size);

    std::vector<torch::Tensor> outs;
    if (is_pt2) {
      outs = package->run({x});
    } else {
      const auto result = script.forward({x}).toTuple();  // keep the tuple alive while reading it
      for (const auto& v : result->elements()) outs.push_back(v.toTensor());
    }
    if (outs.size() != 3) throw std::runtime_error("expected 3 outputs, got " + std::to_string(outs.size()));

    const auto names = metadata_class_names(metadata);
    const auto top1 = outs[1].argmax(1);
    std::cout << "{\"model\": " << json_string(args.model) << ", \"loader\": \""
              << (is_pt2 ? "AOTIModelPackageLoader" : "torch::jit::load") << "\", \"input_shape\": [" << x.size(0)
              << ", 3, " << size << ", " << size << "]";
    for (size_t k = 0; k < outs.size(); ++k) {
      std::cout << ", \"" << kOutputNames[k] << "\": ";
      print_matrix(outs[k]);
    }
    std::cout << ", \"emotion\": [";
    for (int64_t r = 0; r < top1.size(0); ++r) {
      const auto c = top1[r].item<int64_t>();
      const std::string name = c < static_cast<int64_t>(names.size()) ? names[c] : std::to_string(c);
      std::cout << (r ? ", " : "") << json_string(name);
    }
    std::cout << "]}" << std::endl;
  } catch (const c10::Error& e) {  // torch's errors carry a C++ backtrace; the message is what helps
    std::cerr << "error: " << args.model << ": " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << args.model << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}
