// glog's CHECK (pulled in by LibTorch) clashes with Catch2's: use the prefixed macros.
#define CATCH_CONFIG_PREFIX_ALL
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
