# ctest script (tests/CMakeLists.txt, test client_links_no_heavy_math): fails when the link
# closure of aloepri_client, computed at configure time and passed as -DLIBS=a|b|..., holds BLAS,
# LAPACK or libtorch. The client (tokenizer, templates, token mapping, proxy) does no linear
# algebra; the README promises that it links none (issue 15).
if(NOT DEFINED LIBS)
  message(FATAL_ERROR "client_link_test.cmake: pass -DLIBS=lib1|lib2|...")
endif()
string(REPLACE "|" ";" libs "${LIBS}")
set(bad "")
foreach(lib IN LISTS libs)
  get_filename_component(name "${lib}" NAME)
  string(TOLOWER "${name}" lname)
  if(lname MATCHES "(blas|lapack|torch|c10|aloepri_linalg)")
    list(APPEND bad "${lib}")
  endif()
endforeach()
if(bad)
  message(FATAL_ERROR "aloepri_client links heavy math: ${bad} (closure: ${libs})")
endif()
message(STATUS "aloepri_client link closure has no BLAS/LAPACK/libtorch: ${libs}")
