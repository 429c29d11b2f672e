// Durable, all-or-nothing file replacement: write a temporary name in the same directory, fsync it,
// rename it over the final name, fsync the directory. After a crash at any point a reader finds either
// the old file or the complete new one under the final name, never a prefix.
#pragma once

#include <filesystem>
#include <string_view>

namespace electra {

// fsync of a file's data and metadata (opens it read-only; Linux flushes the inode's dirty pages).
void fsync_file(const std::filesystem::path& path);
// fsync of a directory, making renames and creations in it durable. A file system that cannot fsync
// directories (EINVAL, EROFS) is let through: the rename is still atomic there.
void fsync_directory(const std::filesystem::path& dir);
// fsync(temp), rename(temp -> final), fsync(final's directory). Both must be in the same directory. When the
// fsync or the rename fails, temp is removed. Every writer below removes its temporary file on failure.
void commit_file(const std::filesystem::path& temp, const std::filesystem::path& final_path);
// "<dir>/.<name>.tmp": the temporary name for `final_path` (hidden, never matches a final-name pattern).
std::filesystem::path temp_path_for(const std::filesystem::path& final_path);
// Writes `contents` to temp_path_for(path) and commits it; on failure the temporary file is removed.
void write_file_atomically(const std::filesystem::path& path, std::string_view contents);
// Copies `from` to temp_path_for(to) and commits it; on failure the temporary file is removed.
void copy_file_atomically(const std::filesystem::path& from, const std::filesystem::path& to);

// Where to keep `path` aside without replacing anything: "<path>.abandoned", else the first free
// "<path>.abandoned.<n>" (n = 1, 2, ...). For what a run leaves when it resumes an earlier checkpoint.
std::filesystem::path abandoned_name(const std::filesystem::path& path);

}  // namespace electra
