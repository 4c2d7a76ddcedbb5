#include "server/http_head_end.h"

namespace hkv {

size_t HttpHeadEnd(const std::string& in, size_t from) {
  from = from >= 3 ? from - 3 : 0;
  const size_t crlf = in.find("\r\n\r\n", from);
  if (crlf != std::string::npos) return crlf + 4;
  const size_t lf = in.find("\n\n", from);
  return lf == std::string::npos ? std::string::npos : lf + 2;
}

}  // namespace hkv
