package sluice
import (
 _ "github.com/alibaba/sentinel-golang/api"
 _ "github.com/gin-gonic/gin"
 _ "go.yaml.in/yaml/v3"
 _ "github.com/coder/websocket"
 _ "golang.org/x/image/webp"
 _ "golang.org/x/image/draw"
 _ "github.com/google/uuid"
)
