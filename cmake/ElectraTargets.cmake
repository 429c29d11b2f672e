# Shared target settings: warnings as errors on our code, the repository root on the include path.

function(electra_target_defaults target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Werror>)
  target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR})
endfunction()

# electra_library(NAME SOURCES ... DEPS ...)
function(electra_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  electra_target_defaults(${name})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
endfunction()

# electra_app(NAME SOURCES ... DEPS ...): a program in apps/, installed into build/bin.
function(electra_app name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  electra_target_defaults(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bin)
endfunction()

# electra_test(NAME SOURCES ... DEPS ... [LABELS ...] [TIMEOUT s] [NO_DISCOVERY]): a GoogleTest binary, one
# CTest entry per test case (gtest_discover_tests); with NO_DISCOVERY the caller adds its own entries (a binary
# of many short tests, whose process start-ups would cost more than the tests).
include(GoogleTest)

# main() for electra_test binaries (tests/support/test_main.cpp), built once.
function(electra_test_main_library)
  if(NOT TARGET electra_test_main)
    add_library(electra_test_main STATIC ${PROJECT_SOURCE_DIR}/tests/support/test_main.cpp)
    electra_target_defaults(electra_test_main)
    target_link_libraries(electra_test_main PUBLIC GTest::gtest PRIVATE OpenMP::OpenMP_CXX BLAS::BLAS)
    target_compile_definitions(electra_test_main PRIVATE ELECTRA_TEST_PYTHON="${ELECTRA_PYTHON}"
                               ELECTRA_TEST_BUILD_DIR="${PROJECT_BINARY_DIR}")
  endif()
endfunction()
function(electra_test name)
  cmake_parse_arguments(ARG "NO_DISCOVERY" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  electra_test_main_library()
  add_executable(${name} ${ARG_SOURCES})
  electra_target_defaults(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} electra_test_main)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  if(ARG_NO_DISCOVERY)
    return()
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  # One label only: gtest_discover_tests splits list-valued PROPERTIES into separate arguments. The
  # environment the tests need comes from tests/support/test_main.cpp for the same reason.
  list(GET ARG_LABELS 0 _label)
  gtest_discover_tests(${name}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    PROPERTIES LABELS ${_label} TIMEOUT ${ARG_TIMEOUT} ENVIRONMENT OMP_WAIT_POLICY=passive
    DISCOVERY_TIMEOUT 60)
endfunction()

# electra_mpi_test(NAME NP SOURCES ... DEPS ...): a GoogleTest binary run under mpirun -np NP.
function(electra_mpi_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "NP;SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  electra_target_defaults(${name})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  foreach(np IN LISTS ARG_NP)
    add_test(NAME ${name}.np${np}
      COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} --oversubscribe --allow-run-as-root
              -x OMP_NUM_THREADS=1 $<TARGET_FILE:${name}>
      WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
    # Exit code 77: every rank skipped every test (tests/dist/mpi_test_main.cpp).
    set_tests_properties(${name}.np${np} PROPERTIES LABELS "mpi" TIMEOUT ${ARG_TIMEOUT} SKIP_RETURN_CODE 77
      ENVIRONMENT "ELECTRA_PYTHON=${ELECTRA_PYTHON};ELECTRA_BUILD_DIR=${PROJECT_BINARY_DIR};OMPI_MCA_rmaps_base_oversubscribe=1;ELECTRA_SKIP_SLURM_CHECK=1")
  endforeach()
endfunction()
