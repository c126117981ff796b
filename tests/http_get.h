// http_get.h: a plain-HTTP GET for tests that read what the plugin serves
// besides gRPC (its /metrics), through libcurl with no proxy.
//
//   std::string body;
//   long status = testing::HttpGet("http://127.0.0.1:9464/metrics", &body);
#ifndef DEFENDER_TESTS_HTTP_GET_H_
#define DEFENDER_TESTS_HTTP_GET_H_

#include <curl/curl.h>

#include <string>

namespace defender::testing {

// HttpGet fetches `url` into `body` and returns the HTTP status, or 0 when
// no answer came within 10 seconds.
inline long HttpGet(const std::string& url, std::string* body) {
  auto append = [](char* data, size_t size, size_t count, void* out) -> size_t {
    static_cast<std::string*>(out)->append(data, size * count);
    return size * count;
  };
  CURL* curl = curl_easy_init();
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION,
                   static_cast<size_t (*)(char*, size_t, size_t, void*)>(append));
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT, 10L);
  curl_easy_setopt(curl, CURLOPT_NOPROXY, "*");
  long status = 0;
  if (curl_easy_perform(curl) == CURLE_OK) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(curl);
  return status;
}

}  // namespace defender::testing

#endif  // DEFENDER_TESTS_HTTP_GET_H_
