# CUDA kernels of cure_ext (torch-free) and their C++ tests; included by CMakeLists.txt when
# -DCURE_EXT_CUDA=ON. The tests need a GPU to run; without one they report "skipped".
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 80 90)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

# The project-wide options (add_compile_options, sanitizers) are GCC flags that nvcc rejects, so the
# CUDA targets set their own: no FMA contraction on either side of nvcc, as the score requires.
set(CURE_CUDA_OPTIONS --fmad=false -lineinfo -Xcompiler=-ffp-contract=off,-Wall,-Wextra)

add_library(cure_cuda STATIC
  csrc/cuda/launch.cu
  csrc/cuda/select.cu
  csrc/cuda/update.cu)
target_include_directories(cure_cuda PUBLIC ${CMAKE_CURRENT_LIST_DIR}/..)
target_link_libraries(cure_cuda PUBLIC cure_plan)
set_target_properties(cure_cuda PROPERTIES COMPILE_OPTIONS "${CURE_CUDA_OPTIONS}" LINK_OPTIONS "")

file(GLOB CURE_CUDA_TESTS CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/cpp_tests/cuda_*.cu)
foreach(test_source ${CURE_CUDA_TESTS})
  get_filename_component(test_name ${test_source} NAME_WE)
  add_executable(${test_name} ${test_source})
  target_link_libraries(${test_name} PRIVATE cure_cuda)
  set_target_properties(${test_name} PROPERTIES COMPILE_OPTIONS "${CURE_CUDA_OPTIONS}" LINK_OPTIONS "")
  add_test(NAME ${test_name} COMMAND ${test_name})
  set_tests_properties(${test_name} PROPERTIES SKIP_RETURN_CODE 77)
endforeach()
