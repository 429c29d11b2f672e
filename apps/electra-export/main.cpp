// electra-export: a training checkpoint -> Hugging Face directories (discriminator/ and generator/).
// Exit codes: 0 written, 1 error while writing (message on stderr), 2 bad flags or input (a checkpoint or
// vocabulary that cannot be read or does not fit, an output directory that is not empty without --force).
#include <CLI/CLI.hpp>
#include <iostream>
#include <optional>

#include "apps/cli_checks.h"
#include "lib/core/host.h"
#include "lib/core/log.h"
#include "lib/interop/hf_export.h"
#include "lib/interop/model_source.h"

int main(int argc, char** argv) {
  electra::ignore_file_size_signal();
  std::string checkpoint, output, vocab;
  electra::interop::ExportOptions options;
  CLI::App app{
      "electra-export: write a checkpoint as Hugging Face ElectraForPreTraining (discriminator/) and "
      "ElectraForMaskedLM (generator/) directories"};
  app.add_option("--checkpoint", checkpoint, "RUN_DIR (its newest complete checkpoint) or CHECKPOINT.h5")
      ->required()
      ->check(electra::cli::checked_path());
  app.add_option("--output", output, "output directory (must be empty or missing unless --force)")
      ->required()
      ->check(electra::cli::checked_path());
  app.add_option("--vocab", vocab, "vocab.txt (default: the run's data.vocab or data.dir/vocab.txt)")
      ->check(electra::cli::checked_path());
  app.add_flag("--force", options.force, "write into a non-empty output directory");
  try {
    electra::cli::refuse_empty_values(argc, argv);
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  electra::log::init({});
  std::optional<electra::interop::PretrainerBundle> model;
  try {
    model.emplace(electra::interop::load_checkpoint_bundle(checkpoint, vocab));
    electra::interop::check_hf_export(*model, output, options);
  } catch (const std::exception& e) {
    std::cerr << "electra-export: " << e.what() << "\n";
    return 2;
  }
  try {
    const auto files = electra::interop::export_hf(*model, output, options);
    std::cout << "exported " << model->source << " to " << output << " (" << files.size() << " files, vocab "
              << model->vocab.size() << ", lower_case " << (model->tokenizer.lower_case ? "true" : "false") << ")\n";
    return 0;
  } catch (const electra::interop::ExportRefused& e) {  // another export writing the directory: nothing written
    std::cerr << "electra-export: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "electra-export: " << e.what() << "\n";
    return 1;
  }
}
