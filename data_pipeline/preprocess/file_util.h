// Durable file operations: write to a temporary name, fsync, rename, fsync the directory, so a reader
// never sees a half-written shard or manifest ("nothing half-written wins").
#pragma once

#include <cstdint>
#include <string>

namespace electra::data {

// Flushes a file's data to stable storage; errors name the path.
void fsync_file(const std::string& path);
// Flushes a directory entry (after a rename in it).
void fsync_directory(const std::string& dir);
// fsync(tmp), rename(tmp, final), fsync(directory of final).
void commit_file(const std::string& tmp_path, const std::string& final_path);
// Writes `contents` to "<dir>/.<name>.tmp" and commits it to "<dir>/<name>".
void write_file_atomic(const std::string& path, const std::string& contents);
// Copies a file atomically (through a temporary name).
void copy_file_atomic(const std::string& from, const std::string& to);
// The temporary name used for `path`: same directory, "." + file name + ".tmp".
std::string temp_path_for(const std::string& path);
// CRC-32 (zlib polynomial) of a whole file, streamed.
uint32_t file_crc32(const std::string& path);
// Hex form used in manifests: 8 lowercase digits.
std::string crc32_hex(uint32_t crc);

}  // namespace electra::data
